"""`dvp-relayer …`: devnet, deploy, run, submit, status, demo, keygen, gas-report."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from relayer.errors import ConfigError, RelayerError


class _Commands(click.Group):
    """Every command: a configuration error is one line on stderr (the variable and where it came from), exit 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"dvp-relayer: configuration error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Commands)
def main() -> None:
    """Cross-chain atomic DvP relayer."""


@main.group()
def devnet() -> None:
    """Local devnet: two anvil chains, Redis, deployed contracts, demo balances."""


@devnet.command("up")
@click.option("--block-time", type=float, default=1.0, show_default=True, help="seconds per block (0 = automine)")
@click.option("--st-port", type=int, default=8545, show_default=True)
@click.option("--sc-port", type=int, default=8546, show_default=True)
def devnet_up(block_time: float, st_port: int, sc_port: int) -> None:
    from deploy.devnet import DevnetOptions, up

    up(DevnetOptions(block_time=block_time or None, st_port=st_port, sc_port=sc_port), echo=click.echo)


@devnet.command("down")
def devnet_down() -> None:
    from deploy.devnet import DevnetOptions, down

    down(DevnetOptions(), echo=click.echo)


@devnet.command("status")
def devnet_status() -> None:
    from deploy.devnet import DevnetOptions, status

    click.echo(json.dumps(status(DevnetOptions()), indent=2))


@main.command()
@click.option("--rpc-url", required=True, help="any EVM JSON-RPC endpoint")
@click.option("--kind", type=click.Choice(["st", "sc"]), required=True, help="ST chain or coin ledger")
@click.option("--token-name", required=True)
@click.option("--token-symbol", required=True)
@click.option("--decimals", type=int, default=0, show_default=True)
def deploy(rpc_url: str, kind: str, token_name: str, token_symbol: str, decimals: int) -> None:
    """Deploy the escrow and a permissioned token with the key in DVP_DEPLOYER_KEY."""
    import os

    from eth_account import Account

    from adapters.evm import EvmChain
    from deploy.deployer import deploy_chain

    key = os.environ.get("DVP_DEPLOYER_KEY")
    if not key:
        raise click.UsageError("set DVP_DEPLOYER_KEY to the deployer's private key")

    async def go() -> None:
        chain = EvmChain(kind, [rpc_url])
        try:
            dep = await deploy_chain(chain, Account.from_key(key), kind=kind, token_name=token_name,
                                     token_symbol=token_symbol, token_decimals=decimals)
            click.echo(json.dumps(dep.to_dict(), indent=2))
        finally:
            await chain.close()

    asyncio.run(go())


def _settings():  # noqa: ANN202
    from relayer.config import load_settings

    return load_settings()


@main.command()
def run() -> None:
    """Run a relayer worker (engine + HTTP API) until SIGTERM/SIGINT; in-flight sends finish first."""
    from relayer.logging import configure
    from relayer.worker import serve

    settings = _settings()
    configure(settings.log_level)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(go())


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def submit(file: Path) -> None:
    """Submit a signed trade instruction (JSON: {instruction, signature})."""
    from relayer.protocol.instruction import parse_signed
    from relayer.service import build_engine, close_engine

    async def go() -> None:
        engine = build_engine(_settings())
        try:
            await engine.st.ledger.chain.connect()
            await engine.sc.ledger.chain.connect()
            signed = parse_signed(json.loads(file.read_text()))
            created = await engine.intake(signed)
            click.echo(json.dumps({"trade_id": signed.instruction.tradeId, "created": created}))
        finally:
            await close_engine(engine)

    try:
        asyncio.run(go())
    except (RelayerError, json.JSONDecodeError) as exc:
        click.echo(json.dumps({"error": getattr(exc, "code", "invalid_json"), "message": str(exc)}), err=True)
        sys.exit(2)


@main.command()
@click.argument("trade_id")
def status(trade_id: str) -> None:
    """A trade's state and audit trail."""
    from relayer.service import store_for

    async def go() -> None:
        store = store_for(_settings())
        try:
            rec = await store.get(trade_id.lower())
            if rec is None:
                click.echo(json.dumps({"error": "not_found"}))
                sys.exit(1)
            public = {k: v for k, v in rec.fields.items() if k not in ("secret", "instruction")}
            click.echo(json.dumps({"state": rec.state.value, "record": public,
                                   "audit": await store.audit(rec.trade_id)}, indent=2))
        finally:
            await store.close()

    asyncio.run(go())


@main.command()
@click.option("--same-ledger", is_flag=True, help="both tokens on one chain: the one-transaction AtomicDvP path")
def demo(same_ledger: bool) -> None:
    """Devnet up if needed, settle one trade, print every step and both parties' balances."""
    from relayer.demo import demo as run_demo
    from relayer.demo import same_ledger_demo

    state = (same_ledger_demo if same_ledger else run_demo)(echo=click.echo)
    sys.exit(0 if state == "SETTLED" else 1)


@main.command()
@click.option("--trades", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--concurrency", type=int, default=20, show_default=True)
@click.option("--fault-interval", type=float, default=1.5, show_default=True,
              help="mean pause before the next fault (one at a time)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".chaos"), show_default=True)
@click.option("--max-seconds", type=float, default=3600, show_default=True)
def chaos(trades: int, seed: int, concurrency: int, fault_interval: float, workdir: Path, max_seconds: float) -> None:
    """Settle N randomized trades on a private devnet while injecting faults; check both chains; exit 1 on any
    one-sided or stuck trade."""
    from chaos.runner import ChaosConfig, run_chaos

    cfg = ChaosConfig(trades=trades, seed=seed, concurrency=concurrency, fault_interval=fault_interval,
                      workdir=workdir, max_seconds=max_seconds)
    sys.exit(run_chaos(cfg, echo=click.echo))


@main.command()
@click.option("--trades", type=int, default=200, show_default=True, help="trades per throughput run")
@click.option("--latency-trades", type=int, default=10, show_default=True)
@click.option("--raw-transfers", type=int, default=1000, show_default=True, help="ERC-20 transfers per chain")
@click.option("--block-time", type=float, default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".bench"), show_default=True)
@click.option("--soak", type=int, default=0, help="instead: settle this many trades, sampling worker RSS per 1,000")
@click.option("--workers", default="", help="instead: throughput with these worker counts on one Redis, e.g. 1,2,4")
@click.option("--pairs", type=int, default=4, show_default=True, help="seller/buyer account pairs for --workers")
def bench(trades: int, latency_trades: int, raw_transfers: int, block_time: float, as_json: bool,
          workdir: Path, soak: int, workers: str, pairs: int) -> None:
    """Throughput, latency, reaction time, gas, CPU/RSS and Redis memory; raw ceiling and batching off/on."""
    from bench.runner import BenchConfig, run_bench
    from bench.runner import soak as run_soak

    cfg = BenchConfig(trades=trades, latency_trades=latency_trades, raw_transfers=raw_transfers,
                      block_time=block_time, workdir=workdir)
    echo = (lambda _: None) if as_json else click.echo
    if soak:
        click.echo(json.dumps(asyncio.run(run_soak(cfg, soak, echo=echo))))
        return
    if workers:
        from bench.runner import scale_out

        counts = [int(w) for w in workers.split(",") if w.strip()]
        click.echo(json.dumps(asyncio.run(scale_out(cfg, counts, pairs, echo=echo)), indent=2))
        return
    out = run_bench(cfg, echo=echo)
    click.echo(json.dumps(out, indent=None if as_json else 2))


@main.command()
def keygen() -> None:
    """Print a new DVP_SECRET_KEY."""
    from relayer.secrets import generate_key

    click.echo(generate_key())


@main.command("gas-report")
def gas_report() -> None:
    """Measure gas per escrow operation on a fresh anvil; write contracts_sol/gas-report.json."""
    from deploy.gas_report import write_report

    click.echo(json.dumps(write_report(), indent=2))
