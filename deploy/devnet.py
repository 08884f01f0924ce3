"""`dvp-relayer devnet up|down|status`: three anvil chains (two ST platforms, one coin ledger) + Redis + contracts
+ demo balances on this machine.

State lives in .devnet/: pids of what `up` started (so `down` stops only those), chain state files,
deployment.json (addresses, chain ids, RPC URLs, demo accounts), ledgers.toml (the three ledgers, see
docs/ledgers.example.toml) and devnet.env (the relayer's DVP_ settings, pointing at ledgers.toml).
The keys are anvil's public development keys: local use only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from adapters.evm import EvmChain
from deploy.deployer import deploy_chain, onboard_holder
from deploy.processes import DEV_MNEMONIC, AnvilProcess, RedisProcess, port_open, rpc_request
from deploy.toolchain import REPO_ROOT

Account.enable_unaudited_hdwallet_features()

DEVNET_DIR = Path(os.environ.get("DVP_DEVNET_DIR") or REPO_ROOT / ".devnet")  # `devnet --dir` overrides
ROLES = {"issuer": 0, "seller": 1, "buyer": 2, "pts": 3, "watcher": 4}
ST_ISSUE, SC_ISSUE = 1_000_000, 10_000_000_000
CHAINS = ("st", "st2", "sc")  # the devnet's ledger names (deployment.json keys)
# anvil configured like a permissioned chain: pre-Shanghai EVM (no PUSH0, no EIP-1559), zero gas price
PERMISSIONED_ANVIL = ("--hardfork", "berlin", "--gas-price", "0")


def dev_account(index: int) -> Any:
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


@dataclass
class DevnetOptions:
    st_port: int = 8545
    sc_port: int = 8546
    st2_port: int = 8547  # the second ST platform
    st_chain_id: int = 17001
    sc_chain_id: int = 17002
    st2_chain_id: int = 17003
    block_time: float | None = 1.0
    redis_port: int = 6379
    redis_url: str | None = None  # use this Redis as it is (never started, never flushed)
    st_standard: str = "erc3643"  # the first ST platform's token: a T-REX suite, or "own" (SecurityToken)
    st2_permissioned: bool = True  # the second ST platform runs like a GoQuorum/Besu chain (PERMISSIONED_ANVIL)
    directory: Path = DEVNET_DIR


def _pids_file(d: Path) -> Path:
    return d / "pids.json"


def is_up(opts: DevnetOptions) -> bool:
    dep = opts.directory / "deployment.json"
    if not dep.exists():
        return False
    doc = json.loads(dep.read_text())
    try:
        for chain in CHAINS:
            if chain in doc:
                rpc_request(doc[chain]["rpc_url"], "eth_chainId")
    except OSError:
        return False
    return True


async def _deploy(opts: DevnetOptions, st_url: str, sc_url: str, redis_url: str,
                  st2_url: str | None = None) -> dict[str, Any]:
    """Escrows and tokens on each chain, the demo parties onboarded and funded; with st2_url a second ST
    platform as well (the seller holds its token too). The first ST platform's token is an ERC-3643 (T-REX)
    suite unless opts.st_standard says "own"; the second platform keeps the project's SecurityToken."""
    issuer, seller, buyer, pts = (dev_account(ROLES[r]) for r in ("issuer", "seller", "buyer", "pts"))
    st_chain, sc_chain = EvmChain("st", [st_url]), EvmChain("sc", [sc_url])
    st2 = asyncio.ensure_future(_deploy_second_platform(st2_url, issuer, seller, buyer, opts.st2_permissioned)
                                ) if st2_url else None
    same_ledger = st_url == sc_url  # both tokens on one chain: deploy one after the other (one issuer nonce)

    async def both(a: Any, b: Any) -> tuple[Any, Any]:
        return (await a, await b) if same_ledger else tuple(await asyncio.gather(a, b))  # type: ignore[return-value]

    try:
        st_dep, sc_dep = await both(
            deploy_chain(st_chain, issuer, kind="st", token_name="Demo Green Bond 2030", token_symbol="DGB30",
                         standard=opts.st_standard),
            deploy_chain(sc_chain, issuer, kind="sc", token_name="Progmat Demo JPY", token_symbol="DJPY"),
        )
        await both(
            onboard_holder(st_chain, issuer, seller, st_dep, kind="st", issue_amount=ST_ISSUE),
            onboard_holder(sc_chain, issuer, buyer, sc_dep, kind="sc", issue_amount=SC_ISSUE),
        )
        # the buyer must be allowed to receive the ST, the seller to receive the SC
        await onboard_holder(st_chain, issuer, buyer, st_dep, kind="st", issue_amount=0)
        await onboard_holder(sc_chain, issuer, seller, sc_dep, kind="sc", issue_amount=0)
        st2_doc = await st2 if st2 is not None else None
    finally:
        if st2 is not None and not st2.done():
            st2.cancel()
        await st_chain.close()
        await sc_chain.close()
    doc = {
        "st": st_dep.to_dict(),
        "sc": sc_dep.to_dict(),
        "redis_url": redis_url,
        "accounts": {r: dev_account(i).address for r, i in ROLES.items()},
    }
    if st2_doc is not None:
        doc["st2"] = st2_doc
    return doc


async def _deploy_second_platform(url: str, issuer: Any, seller: Any, buyer: Any,
                                  permissioned: bool) -> dict[str, Any]:
    """The project's allowlist SecurityToken; on a permissioned profile: legacy zero-price transactions and the
    london build of the contracts."""
    chain = EvmChain("st2", [url], fee_mode="legacy" if permissioned else "eip1559",
                     gas_price_wei=0 if permissioned else None)
    try:
        dep = await deploy_chain(chain, issuer, kind="st", token_name="Demo Transition Bond 2032", token_symbol="DTB32",
                                 evm_version="london" if permissioned else "cancun")
        await onboard_holder(chain, issuer, seller, dep, kind="st", issue_amount=ST_ISSUE)
        await onboard_holder(chain, issuer, buyer, dep, kind="st", issue_amount=0)
        return dep.to_dict() | ({"profile": "permissioned"} if permissioned else {})
    finally:
        await chain.close()


def ledgers_toml(doc: dict[str, Any], rpc_urls: dict[str, list[str]] | None = None) -> str:
    """The devnet's ledgers as a DVP_CONFIG_FILE (one [[ledgers]] table per chain). `rpc_urls`: other endpoints
    for some ledgers (primary first, then standbys; the chaos run's proxies), then without a WebSocket URL."""
    out = ["# written by `dvp-relayer devnet up`: the devnet's ledgers (see docs/ledgers.example.toml)"]
    for name in CHAINS:
        if name not in doc:
            continue
        c = doc[name]
        tokens = ", ".join(f'"{t}"' for t in c["tokens"].values())
        urls = (rpc_urls or {}).get(name)
        out += ["", "[[ledgers]]", f'name = "{name}"', f'role = "{"sc" if name == "sc" else "st"}"',
                f"chain_id = {c['chain_id']}",
                "rpc_urls = [" + ", ".join(f'"{u}"' for u in urls or [c["rpc_url"]]) + "]"]
        if urls is None:
            out.append(f'ws_url = "{c["rpc_url"].replace("http://", "ws://")}"')
        out += [f'escrow = "{c["escrow"]}"', f"tokens = [{tokens}]", f"start_block = {c['deploy_block']}"]
        if c.get("dvp") and name != "sc":
            out.append(f'dvp_contract = "{c["dvp"]}"')
        if c.get("profile") == "permissioned":
            out += ['fee_mode = "legacy"', "gas_price_gwei = 0", 'evm_version = "london"']
    return "\n".join(out) + "\n"


def env_lines(doc: dict[str, Any], block_time: float | None, ledgers_file: Path | None = None) -> list[str]:
    """devnet.env: the DVP_ST_* / DVP_SC_* values of the first ST chain and the coin ledger, and with
    `ledgers_file` DVP_CONFIG_FILE naming every ledger (those values then repeat the file's "st" and "sc")."""
    from relayer.secrets import generate_key

    seller, buyer, pts = dev_account(ROLES["seller"]), dev_account(ROLES["buyer"]), dev_account(ROLES["pts"])
    st, sc = doc["st"], doc["sc"]
    return [
        "# written by `dvp-relayer devnet up` - anvil development keys, local use only",
        f"DVP_REDIS_URL={doc['redis_url']}",
        f"DVP_CONFIG_FILE={ledgers_file or ''}",
        f"DVP_ST_RPC_URL={st['rpc_url']}",
        f"DVP_ST_WS_URL={st['rpc_url'].replace('http://', 'ws://')}",
        f"DVP_ST_CHAIN_ID={st['chain_id']}",
        f"DVP_ST_ESCROW={st['escrow']}",
        f"DVP_ST_TOKENS={','.join(st['tokens'].values())}",
        f"DVP_ST_START_BLOCK={st['deploy_block']}",
        f"DVP_DVP_CONTRACT={st.get('dvp', '')}",
        f"DVP_SC_RPC_URL={sc['rpc_url']}",
        f"DVP_SC_WS_URL={sc['rpc_url'].replace('http://', 'ws://')}",
        f"DVP_SC_CHAIN_ID={sc['chain_id']}",
        f"DVP_SC_ESCROW={sc['escrow']}",
        f"DVP_SC_TOKENS={','.join(sc['tokens'].values())}",
        f"DVP_SC_START_BLOCK={sc['deploy_block']}",
        f"DVP_TRUSTED_PTS_SIGNERS={pts.address}",
        f"DVP_PTS_DOMAIN_SALT=0x{os.urandom(32).hex()}",  # this devnet's own instruction domain
        f"DVP_API_TOKENS=devnet-{os.urandom(12).hex()}",  # `dvp-relayer submit` uses the first
        f"DVP_PARTY_KEYS={seller.key.hex()},{buyer.key.hex()}",
        f"DVP_SECRET_KEY={generate_key()}",
        f"DVP_BLOCK_TIME={block_time or 1}",
        f"DVP_DEMO_PTS_KEY={pts.key.hex()}",
    ]


def up(opts: DevnetOptions, echo: Any = print) -> dict[str, Any]:
    """Start what is missing, deploy, issue demo balances, write deployment.json and devnet.env."""
    d = opts.directory
    d.mkdir(parents=True, exist_ok=True)
    if is_up(opts):
        echo(f"devnet already up ({d / 'deployment.json'})")
        return json.loads((d / "deployment.json").read_text())
    started: dict[str, int] = {}
    st = AnvilProcess(opts.st_chain_id, opts.st_port, opts.block_time, log_file=d / "anvil-st.log").start()
    started["anvil-st"] = st.pid  # type: ignore[assignment]
    sc = AnvilProcess(opts.sc_chain_id, opts.sc_port, opts.block_time, log_file=d / "anvil-sc.log").start()
    started["anvil-sc"] = sc.pid  # type: ignore[assignment]
    st2 = AnvilProcess(opts.st2_chain_id, opts.st2_port, opts.block_time, log_file=d / "anvil-st2.log",
                       extra_args=PERMISSIONED_ANVIL if opts.st2_permissioned else ()).start()
    started["anvil-st2"] = st2.pid  # type: ignore[assignment]
    echo(f"anvil ST chains {opts.st_chain_id} on {st.url} and {opts.st2_chain_id} on {st2.url}"
         f"{' (permissioned profile: berlin, gas price 0)' if opts.st2_permissioned else ''}, "
         f"coin ledger {opts.sc_chain_id} on {sc.url}")
    if opts.redis_url:
        redis_url = opts.redis_url
        echo(f"using the Redis at {redis_url.split('@')[-1]}")
    elif port_open(opts.redis_port):
        redis_url = f"redis://127.0.0.1:{opts.redis_port}/0"
        echo(f"reusing the Redis listening on 127.0.0.1:{opts.redis_port} (nothing in it is flushed)")
    else:
        rp = RedisProcess(opts.redis_port, d / "redis", appendfsync="everysec").start()
        started["redis"] = rp.pid  # type: ignore[assignment]
        redis_url = rp.url
        echo(f"started redis-server on 127.0.0.1:{opts.redis_port} (AOF on)")
    _pids_file(d).write_text(json.dumps(started))
    doc = asyncio.run(_deploy(opts, st.url, sc.url, redis_url, st2_url=st2.url))
    (d / "deployment.json").write_text(json.dumps(doc, indent=2) + "\n")
    ledgers = d / "ledgers.toml"
    ledgers.write_text(ledgers_toml(doc))
    env = d / "devnet.env"
    env.write_text("\n".join(env_lines(doc, opts.block_time, ledgers.resolve())) + "\n")
    os.chmod(env, 0o600)
    echo(f"deployed: ST escrows {doc['st']['escrow']} and {doc['st2']['escrow']}, SC escrow {doc['sc']['escrow']}")
    echo(f"wrote {d / 'deployment.json'}, {ledgers} and {env}")
    return doc


def down(opts: DevnetOptions, echo: Any = print) -> None:
    """Stop only the processes `up` started."""
    pf = _pids_file(opts.directory)
    if not pf.exists():
        echo("no devnet started from this directory")
        return
    for name, pid in json.loads(pf.read_text()).items():
        try:
            os.kill(pid, signal.SIGTERM)
            echo(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            echo(f"{name} (pid {pid}) was not running")
    pf.unlink()
    (opts.directory / "deployment.json").unlink(missing_ok=True)


def status(opts: DevnetOptions) -> dict[str, Any]:
    dep = opts.directory / "deployment.json"
    if not dep.exists():
        return {"up": False}
    doc = json.loads(dep.read_text())
    out: dict[str, Any] = {"up": is_up(opts)}
    for chain in (c for c in CHAINS if c in doc):
        try:
            out[chain] = {"rpc_url": doc[chain]["rpc_url"],
                          "block": int(str(rpc_request(doc[chain]["rpc_url"], "eth_blockNumber")), 16)}
        except OSError as exc:
            out[chain] = {"rpc_url": doc[chain]["rpc_url"], "error": str(exc)}
    return out
