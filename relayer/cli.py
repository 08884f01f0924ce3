"""`dvp-relayer …`: devnet, deploy, onboard-escrow, run, submit, status, sign, demo, keygen, keys, gas-report,
chaos, bench."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from relayer.errors import ConfigError


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
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="DVP_DEVNET_DIR", help="where the devnet keeps its state  [default: .devnet in the repository]")
@click.pass_context
def devnet(ctx: click.Context, directory: Path | None) -> None:
    """Local devnet: three anvil chains (two ST platforms, one coin ledger), Redis, contracts, demo balances."""
    from deploy.devnet import DEVNET_DIR

    ctx.obj = directory or DEVNET_DIR


@devnet.command("up")
@click.option("--block-time", type=float, default=1.0, show_default=True, help="seconds per block (0 = automine)")
@click.option("--st-port", type=int, default=8545, show_default=True)
@click.option("--sc-port", type=int, default=8546, show_default=True)
@click.option("--st2-port", type=int, default=8547, show_default=True, help="the second ST platform")
@click.option("--redis-port", type=int, default=6379, show_default=True,
              help="reuse a Redis listening here (nothing is flushed), else start one on it")
@click.option("--redis-url", default=None, help="use this Redis instead (e.g. redis://127.0.0.1:6390/2)")
@click.option("--st-standard", type=click.Choice(["erc3643", "own"]), default="erc3643", show_default=True,
              help="the first ST platform's token: a T-REX suite, or the project's allowlist SecurityToken")
@click.pass_obj
def devnet_up(directory: Path, block_time: float, st_port: int, sc_port: int, st2_port: int, redis_port: int,
              redis_url: str | None, st_standard: str) -> None:
    from deploy.devnet import DevnetOptions, up

    up(DevnetOptions(block_time=block_time or None, st_port=st_port, sc_port=sc_port, st2_port=st2_port,
                     redis_port=redis_port, redis_url=redis_url, directory=directory, st_standard=st_standard),
       echo=click.echo)


@devnet.command("down")
@click.pass_obj
def devnet_down(directory: Path) -> None:
    from deploy.devnet import DevnetOptions, down

    down(DevnetOptions(directory=directory), echo=click.echo)


@devnet.command("status")
@click.pass_obj
def devnet_status(directory: Path) -> None:
    from deploy.devnet import DevnetOptions, status

    click.echo(json.dumps(status(DevnetOptions(directory=directory)), indent=2))


def _key_from_env(var: str, need: str) -> Any:
    """The account whose private key is in environment variable `var` (never a CLI argument: it would show in
    `ps`); one ConfigError line when missing or malformed."""
    import os

    from eth_account import Account

    key = os.environ.get(var, "").strip()
    if not key:
        raise ConfigError(f"{var} (environment): missing; {need}")
    try:
        return Account.from_key(key)
    except (ValueError, TypeError):
        raise ConfigError(f"{var} (environment): not a 32-byte private key (0x + 64 hex digits)") from None


@main.command()
@click.option("--rpc-url", required=True, help="any EVM JSON-RPC endpoint")
@click.option("--kind", type=click.Choice(["st", "sc"]), required=True, help="ST chain or coin ledger")
@click.option("--token-name", required=True)
@click.option("--token-symbol", required=True)
@click.option("--decimals", type=int, default=0, show_default=True)
@click.option("--evm-version", type=click.Choice(["cancun", "london"]), default="cancun", show_default=True,
              help="the EVM the chain runs (london: pre-Shanghai chains, no PUSH0)")
@click.option("--fee-mode", type=click.Choice(["eip1559", "legacy"]), default="eip1559", show_default=True)
@click.option("--gas-price-gwei", type=float, default=None, help="legacy fee mode: a fixed gas price (0 allowed)")
def deploy(rpc_url: str, kind: str, token_name: str, token_symbol: str, decimals: int, evm_version: str,
           fee_mode: str, gas_price_gwei: float | None) -> None:
    """Deploy the escrow and a permissioned token with the key in DVP_DEPLOYER_KEY."""
    from adapters.errors import LedgerError
    from adapters.evm import EvmChain
    from deploy.deployer import deploy_chain
    from relayer.config import gwei_to_wei

    deployer = _key_from_env("DVP_DEPLOYER_KEY", "set it to the deployer's private key")

    async def go() -> None:
        chain = EvmChain(kind, [rpc_url], fee_mode=fee_mode, gas_price_wei=gwei_to_wei(gas_price_gwei))
        try:
            dep = await deploy_chain(chain, deployer, kind=kind, token_name=token_name,
                                     token_symbol=token_symbol, token_decimals=decimals, evm_version=evm_version)
            click.echo(json.dumps(dep.to_dict(), indent=2))
        except LedgerError as exc:
            raise click.ClickException(f"deploy on {rpc_url} failed: {exc}") from None
        finally:
            await chain.close()

    asyncio.run(go())


def _settings():  # noqa: ANN202
    from relayer.config import load_settings

    return load_settings()


@main.command("onboard-escrow")
@click.option("--ledger", default="", help="the configured ledger (default: the first ST ledger)")
@click.option("--token", "tokens", multiple=True, help="token address (default: every token of that ledger)")
@click.option("--identity", default="", help="the escrow's ONCHAINID, once deployed and given its claims")
@click.option("--country", type=int, default=392, show_default=True, help="ISO 3166-1 numeric, stored with it")
@click.option("--send", is_flag=True, help="send the identity-registry registration with the agent key in "
              "DVP_AGENT_KEY (environment)")
def onboard_escrow(ledger: str, tokens: tuple[str, ...], identity: str, country: int, send: bool) -> None:
    """What an issuer must still do so that the escrow may hold its token (ERC-3643: a verified identity)."""
    from adapters.errors import LedgerError
    from adapters.evm import EvmChain
    from deploy.onboarding import escrow_status, send_registration
    from relayer.config import gwei_to_wei

    settings = _settings()
    configs = settings.ledger_configs()
    chosen = next((c for c in configs if c.name == ledger), None) if ledger else next(
        (c for c in configs if c.role == "st"), None)
    if chosen is None:
        raise ConfigError(f"no ledger named {ledger!r}: configured are {', '.join(c.name for c in configs)}")
    agent = _key_from_env("DVP_AGENT_KEY", "--send needs an identity-registry agent's key") if send else None

    async def go() -> list[dict]:
        chain = EvmChain(chosen.name, chosen.rpc_urls, fee_mode=chosen.fee_mode,
                         gas_price_wei=gwei_to_wei(chosen.gas_price_gwei))
        out = []
        try:
            for token in tokens or chosen.tokens:
                status = await escrow_status(chain, token, chosen.escrow, identity, country)
                doc = status.to_dict()
                if agent is not None and (tx := await send_registration(chain, agent, status)):
                    doc["sent"] = tx
                    doc["admitted"] = (await escrow_status(chain, token, chosen.escrow, identity, country)).admitted
                out.append(doc)
            return out
        except LedgerError as exc:
            raise click.ClickException(f"{chosen.name}: {exc}") from None
        finally:
            await chain.close()

    click.echo(json.dumps(asyncio.run(go()), indent=2))


@main.command()
def run() -> None:
    """Run a relayer worker (engine + HTTP API) until SIGTERM/SIGINT; in-flight sends finish first."""
    from relayer.diagnostics import install_heap_probe
    from relayer.logging import configure
    from relayer.worker import serve

    settings = _settings()
    configure(settings.log_level)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        install_heap_probe(loop)
        await serve(settings, stop)

    asyncio.run(go())


def _client(api_url: str | None, token: str | None):  # noqa: ANN202
    from relayer.api_client import ApiClient

    return ApiClient.from_settings(_settings(), url=api_url, token=token)


_API_OPTIONS = [
    click.option("--api-url", default=None, help="the worker's API (default: http://DVP_API_HOST:DVP_API_PORT)"),
    click.option("--token", default=None, envvar="DVP_API_TOKEN",
                 help="bearer token (default: $DVP_API_TOKEN, else the first of DVP_API_TOKENS)"),
]


def _api_options(fn):  # noqa: ANN001, ANN202
    for option in reversed(_API_OPTIONS):
        fn = option(fn)
    return fn


def _call_api(coro) -> tuple[int, object]:  # noqa: ANN001
    from relayer.api_client import ApiUnreachable

    try:
        return asyncio.run(coro)
    except ApiUnreachable as exc:
        click.echo(f"dvp-relayer: {exc}", err=True)
        sys.exit(3)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_api_options
def submit(file: Path, api_url: str | None, token: str | None) -> None:
    """Post a signed trade instruction (JSON: {instruction, signature}) to a running worker's API.

    Prints the API's answer; exit 0 when accepted (202), 1 when refused (the answer says why)."""
    status_code, answer = _call_api(_client(api_url, token).submit(file.read_bytes()))
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == 202 else 1)


@main.command()
@click.option("--from", "start", required=True, help="first acceptance time (ISO date or date-time, UTC)")
@click.option("--to", "end", required=True, help="end, exclusive (ISO date or date-time, UTC)")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--verify", is_flag=True, help="check every row against both chains; exit 1 when one disagrees")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write here, not stdout")
def report(start: str, end: str, fmt: str, verify: bool, out: Path | None) -> None:
    """One row per trade accepted in [--from, --to): times, parties, token symbols and amounts in token units,
    transaction hashes, gas, outcome; with --format json also daily totals per token and counterparty."""
    from relayer import report as rpt
    from relayer.service import build_engine

    settings = _settings()

    def when(text: str) -> float:
        try:
            return rpt.parse_when(text)
        except rpt.BadRange as exc:
            raise click.BadParameter(str(exc)) from None

    async def go() -> tuple[str, int]:
        engine = build_engine(settings)
        try:
            for side in engine.sides:
                await side.ledger.chain.connect()
            try:
                trades = await rpt.trades_between(engine.store, when(start), when(end))
            except rpt.TooManyRows as exc:
                raise click.ClickException(str(exc)) from None
            rows = await rpt.build_rows(engine.routes, trades)
            bad = await rpt.verify(engine.routes, rows, trades) if verify else 0
            return rpt.render(rows, fmt), bad
        finally:
            await engine.store.close()
            for side in engine.sides:
                await side.ledger.chain.close()

    text, bad = asyncio.run(go())
    if out is not None:
        out.write_text(text)
    else:
        click.echo(text, nl=False)
    if verify:
        click.echo(f"verified against the chains: {bad} trade(s) disagree", err=True)
    sys.exit(1 if bad else 0)


@main.group()
def operator() -> None:
    """Operator actions through a running worker's API (an operator token): pause or resume intake, cancel a
    trade nothing was locked for, mark one watch-only, re-drive one, run the refund sweep now. Each is logged with
    who did it (the token's fingerprint)."""


@operator.command("pause")
@click.option("--reason", default="", help="shown to whoever is refused meanwhile, and in the operator log")
@_api_options
def operator_pause(reason: str, api_url: str | None, token: str | None) -> None:
    """Pause intake for every worker of this firm: new trades are answered 503 intake_paused; open ones go on."""
    status_code, answer = _call_api(_client(api_url, token).intake(True, reason))
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == 200 else 1)


@operator.command("resume")
@_api_options
def operator_resume(api_url: str | None, token: str | None) -> None:
    """Resume intake."""
    status_code, answer = _call_api(_client(api_url, token).intake(False))
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == 200 else 1)


@operator.command("intake")
@_api_options
def operator_intake(api_url: str | None, token: str | None) -> None:
    """Whether intake is paused, by whom and why."""
    status_code, answer = _call_api(_client(api_url, token).intake())
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == 200 else 1)


@operator.command("cancel")
@click.argument("trade_id")
@click.option("--reason", default="")
@_api_options
def operator_cancel(trade_id: str, reason: str, api_url: str | None, token: str | None) -> None:
    """Cancel a MATCHED trade nothing was locked for (ABORTED). A trade with a lock is refused: it ends by refunds
    at its timelocks."""
    status_code, answer = _call_api(_client(api_url, token).cancel(trade_id, reason))
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == 200 else 1)


def _trade_action(trade_id: str, action: str, reason: str, api_url: str | None, token: str | None,
                  ok: int) -> None:
    """POST /v1/trades/{id}/{action} through the API; prints the answer, exits 0 on `ok`."""
    status_code, answer = _call_api(_client(api_url, token).trade_action(trade_id, action, reason))
    click.echo(json.dumps(answer))
    sys.exit(0 if status_code == ok else 1)


@operator.command("watch-only")
@click.argument("trade_id")
@click.option("--reason", default="")
@_api_options
def operator_watch_only(trade_id: str, reason: str, api_url: str | None, token: str | None) -> None:
    """Mark a trade this relayer holds no party's key for as watch-only (shown so on the dashboard)."""
    _trade_action(trade_id, "watch-only", reason, api_url, token, ok=200)


@operator.command("redrive")
@click.argument("trade_id")
@click.option("--reason", default="")
@_api_options
def operator_redrive(trade_id: str, reason: str, api_url: str | None, token: str | None) -> None:
    """Have the worker driving a trade read both chains again and decide it again (audit: redriven)."""
    _trade_action(trade_id, "redrive", reason, api_url, token, ok=202)


@operator.command("sweep")
@click.option("--wait", "wait_s", default=15.0, show_default=True, help="seconds to wait for the sweep's outcome")
@_api_options
def operator_sweep(wait_s: float, api_url: str | None, token: str | None) -> None:
    """Run the refund sweep now (strays and expired locks refunded, every trade decided again); prints its
    outcome once the sweeping worker ran it, or exits 1 if it did not within --wait."""
    client = _client(api_url, token)
    status_code, answer = _call_api(client.sweep(run=True))
    if status_code != 202:
        click.echo(json.dumps(answer))
        sys.exit(1)
    asked = answer["pending"] if isinstance(answer, dict) else None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _, status_doc = _call_api(client.sweep(run=False))
        last = (status_doc.get("last") if isinstance(status_doc, dict) else None) or {}
        if asked and last.get("requested_at") == asked["at"]:
            click.echo(json.dumps(last))
            sys.exit(0)
        time.sleep(0.5)
    click.echo(json.dumps({"error": "sweep_not_run", "message": f"no worker ran the sweep within {wait_s}s "
                           "(is the worker holding the first account running?)", "pending": asked}))
    sys.exit(1)


@main.command()
@click.argument("trade_id")
@_api_options
def status(trade_id: str, api_url: str | None, token: str | None) -> None:
    """A trade's state, legs, timelocks and audit trail, from a running worker's API (never the secret)."""
    status_code, answer = _call_api(_client(api_url, token).trade(trade_id))
    click.echo(json.dumps(answer, indent=2))
    sys.exit(0 if status_code == 200 else 1)


@main.command()
@click.option("--st-amount", type=int, default=100, show_default=True)
@click.option("--sc-amount", type=int, default=9_850_000, show_default=True)
@click.option("--deadline-in", type=int, default=600, show_default=True, help="seconds from the ST chain's now")
@click.option("--pts-key-var", default="DVP_DEMO_PTS_KEY", show_default=True,
              help="variable (environment or env file) holding the PTS key to sign with: a devnet key")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("trade.json"), show_default=True)
def sign(st_amount: int, sc_amount: int, deadline_in: int, pts_key_var: str, out: Path) -> None:
    """Developer command: write a signed trade instruction for the devnet (seller and buyer = the first two party
    keys, the first configured ST and SC tokens), ready for `dvp-relayer submit`."""
    import os

    from dotenv import dotenv_values

    from adapters.evm import EvmChain
    from relayer.config import env_file
    from relayer.protocol.instruction import TradeInstruction, sign_instruction

    settings = _settings()
    key = os.environ.get(pts_key_var) or dotenv_values(env_file()).get(pts_key_var)
    if not key:
        raise ConfigError(f"{pts_key_var} is not set: the PTS key to sign with (devnet.env has one)")
    parties = list(settings.accounts())
    if len(parties) < 2 or not settings.st_token_set() or not settings.sc_token_set():
        raise ConfigError("DVP_PARTY_KEYS needs a seller and a buyer key, DVP_ST_TOKENS and DVP_SC_TOKENS a token each")

    async def go() -> TradeInstruction:
        st, sc = EvmChain("st", settings.st_urls()), EvmChain("sc", settings.sc_urls())
        try:
            st_id, sc_id, now = await st.connect(), await sc.connect(), await st.now()
        finally:
            await st.close()
            await sc.close()
        return TradeInstruction(
            tradeId="0x" + os.urandom(32).hex(), stChainId=st_id, stToken=sorted(settings.st_token_set())[0],
            stAmount=st_amount, scChainId=sc_id, scToken=sorted(settings.sc_token_set())[0], scAmount=sc_amount,
            sellerStAccount=parties[0], sellerScAccount=parties[0], buyerScAccount=parties[1],
            buyerStAccount=parties[1], deadline=now + deadline_in)

    signed = sign_instruction(asyncio.run(go()), key, settings.domain_salt())
    out.write_text(signed.model_dump_json(indent=2) + "\n")
    click.echo(json.dumps({"trade_id": signed.instruction.tradeId, "file": str(out)}))


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
@click.option("--st-standard", type=click.Choice(["erc3643", "own"]), default="erc3643", show_default=True,
              help="the ST: a T-REX suite (issuer actions injected) or the project's SecurityToken")
@click.option("--sentinel/--single-redis", default=True, show_default=True,
              help="Redis as master + replica + Sentinel (failovers injected), or one redis-server")
@click.option("--fault-rounds", type=int, default=0, show_default=True,
              help="go on with more trades until every fault and bot kind came up this many times")
def chaos(trades: int, seed: int, concurrency: int, fault_interval: float, workdir: Path, max_seconds: float,
          st_standard: str, sentinel: bool, fault_rounds: int) -> None:
    """Settle N randomized trades on a private devnet while injecting faults; check both chains; exit 1 on any
    one-sided, stuck or lost trade."""
    from chaos.runner import ChaosConfig, run_chaos

    cfg = ChaosConfig(trades=trades, seed=seed, concurrency=concurrency, fault_interval=fault_interval,
                      workdir=workdir, max_seconds=max_seconds, st_standard=st_standard, sentinel=sentinel,
                      fault_rounds=fault_rounds)
    sys.exit(run_chaos(cfg, echo=click.echo))


@main.command()
@click.option("--trades", type=int, default=200, show_default=True, help="trades per throughput run")
@click.option("--latency-trades", type=int, default=10, show_default=True)
@click.option("--raw-transfers", type=int, default=1000, show_default=True, help="ERC-20 transfers per chain")
@click.option("--block-time", type=float, default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".bench"), show_default=True)
@click.option("--soak", type=int, default=0, help="instead: settle this many trades, sampling worker RSS per 1,000")
@click.option("--trace-heap", type=int, default=0, help="with --soak: run the worker under tracemalloc (N frames) "
              "and log what grew from 1,000 settled trades to the end")
@click.option("--workers", default="", help="instead: throughput with these worker counts on one Redis, e.g. 1,2,4")
@click.option("--pairs", type=int, default=4, show_default=True, help="seller/buyer account pairs for --workers")
@click.option("--rate", "rates", default="", help="also: open-loop runs at these arrival rates (trades/s), e.g. 50,100")
@click.option("--duration", type=float, default=20.0, show_default=True, help="seconds of arrivals per --rate run")
@click.option("--signer", type=click.Choice(["env", "pkcs11"]), default="env", show_default=True,
              help="where the workers' party keys are: raw in the environment, or in a SoftHSM2 token")
def bench(trades: int, latency_trades: int, raw_transfers: int, block_time: float, as_json: bool,
          workdir: Path, soak: int, trace_heap: int, workers: str, pairs: int, rates: str, duration: float,
          signer: str) -> None:
    """Throughput, latency, reaction time, gas, CPU/RSS and Redis memory; raw ceiling and batching off/on;
    with --rate, sustained load at constant arrival rates."""
    from bench.runner import BenchConfig, run_bench
    from bench.runner import soak as run_soak

    try:
        rate_list = tuple(float(r) for r in rates.split(",") if r.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 50,100,200", param_hint="--rate") from None
    if len(rate_list) > 7 or any(r <= 0 for r in rate_list):
        raise click.BadParameter("1 to 7 positive rates (each run gets its own Redis database)", param_hint="--rate")
    cfg = BenchConfig(trades=trades, latency_trades=latency_trades, raw_transfers=raw_transfers,
                      block_time=block_time, workdir=workdir, rates=rate_list, duration=duration, signer=signer)
    echo = (lambda _: None) if as_json else click.echo
    if soak:
        click.echo(json.dumps(asyncio.run(run_soak(cfg, soak, echo=echo, trace_heap=trace_heap))))
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


from relayer.keys_cli import keys  # noqa: E402 - registered here, defined in its own module

main.add_command(keys)


@main.command("gas-report")
def gas_report() -> None:
    """Measure gas per escrow operation on a fresh anvil; write contracts_sol/gas-report.json."""
    from deploy.gas_report import write_report

    click.echo(json.dumps(write_report(), indent=2))
