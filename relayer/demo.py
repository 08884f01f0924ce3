"""`dvp-relayer demo`: on the local devnet, one cross-chain settlement on each of its two ST platforms against
its coin ledger, by one worker, every step printed as it happens."""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from dotenv import dotenv_values

from adapters.contracts import encode_call
from deploy.devnet import DEVNET_DIR, DevnetOptions, up
from relayer.config import Settings
from relayer.errors import ConfigError
from relayer.logging import configure
from relayer.protocol.instruction import SignedInstruction, TradeInstruction, sign_instruction
from relayer.protocol.states import TERMINAL
from relayer.service import build_engine, close_engine


def devnet_settings() -> tuple[Settings, dict[str, str]]:
    env = {k: v for k, v in dotenv_values(DEVNET_DIR / "devnet.env").items() if v is not None}
    fields = {k.removeprefix("DVP_").lower(): v for k, v in env.items() if k.startswith("DVP_")}
    fields.pop("demo_pts_key", None)
    return Settings.model_validate(fields), env  # these values only: neither the environment nor an env file


async def _balance(chain: Any, token: str, who: str) -> int:
    raw = await chain.call(lambda w3: w3.eth.call({"to": token, "data": encode_call("SecurityToken", "balanceOf", who)}))
    return int.from_bytes(bytes(raw)[-32:], "big")


@dataclass
class _DemoTrade:
    platform: str  # the ST ledger's name
    signed: SignedInstruction
    shown: int = 0  # audit entries printed
    state: str = "MATCHED"
    finished: float = float("nan")  # seconds from submission to a terminal state


async def run_demo(echo: Any = print, st_amount: int = 100, price: int = 98_500,
                   settings: Settings | None = None, pts_key: str | None = None) -> str:
    """One trade on each ST platform against the (first) coin ledger, submitted together and settled by one
    worker; returns SETTLED when every one settled, else the first other final state."""
    if settings is None:
        settings, env = devnet_settings()
        pts_key = env["DVP_DEMO_PTS_KEY"]
    if pts_key is None:
        raise ConfigError("the demo needs a PTS key to sign with (DVP_DEMO_PTS_KEY in devnet.env)")
    configure("WARNING")
    engine = build_engine(settings)
    await engine.start()
    accounts = list(settings.accounts())
    seller, buyer = accounts[0], accounts[1]
    sc = engine.routes.of_role("sc")[0]
    sc_token = sorted(sc.config.token_set())[0]
    sc_chain_id = await sc.ledger.chain.connect()
    trades = []
    for st in engine.routes.of_role("st"):
        st_chain_id = await st.ledger.chain.connect()
        ins = TradeInstruction(
            tradeId="0x" + os.urandom(32).hex(), stChainId=st_chain_id, stToken=sorted(st.config.token_set())[0],
            stAmount=st_amount, scChainId=sc_chain_id, scToken=sc_token, scAmount=st_amount * price,
            sellerStAccount=seller, sellerScAccount=seller, buyerScAccount=buyer, buyerStAccount=buyer,
            deadline=await st.ledger.chain.now() + 600,
        )
        trades.append(_DemoTrade(st.name, sign_instruction(ins, pts_key, settings.domain_salt())))

    async def balances() -> dict[str, int]:
        out = {}
        for t in trades:
            chain, token = engine.routes.by_name[t.platform].ledger.chain, t.signed.instruction.stToken
            out[f"seller ST@{t.platform}"] = await _balance(chain, token, seller)
            out[f"buyer ST@{t.platform}"] = await _balance(chain, token, buyer)
        out[f"seller SC@{sc.name}"] = await _balance(sc.ledger.chain, sc_token, seller)
        out[f"buyer SC@{sc.name}"] = await _balance(sc.ledger.chain, sc_token, buyer)
        return out

    before = await balances()
    kinds = {"erc3643": "an ERC-3643 (T-REX) token", "allowlist": "an allowlist ERC-20", "erc20": "an ERC-20"}
    for t in trades:
        ins = t.signed.instruction
        rules = engine.routes.by_name[t.platform].ledger.rules
        kind = kinds.get((await rules.rules(ins.stToken)).standard, "a token")
        echo(f"trade {ins.tradeId} on ST platform {t.platform} (chain {ins.stChainId}, {kind}) against "
             f"{sc.name} (chain {ins.scChainId})")
        echo(f"  seller {seller} delivers {st_amount} ST; buyer {buyer} pays {ins.scAmount} SC")
    t0 = time.monotonic()
    for t in trades:
        await engine.intake(t.signed)
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    try:
        while time.monotonic() - t0 < 300 and any(math.isnan(t.finished) for t in trades):
            for t in trades:
                await _show_progress(engine, t, t0, echo, tag=f"[{t.platform}]" if len(trades) > 1 else "")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await runner
    after = await balances()
    for t in trades:
        echo(f"final state on {t.platform}: {t.state} after {t.finished:.2f}s")
    for k in before:
        echo(f"  {k:<14} {before[k]:>16} -> {after[k]:>16}  ({after[k] - before[k]:+})")
    await close_engine(engine)
    return next((t.state for t in trades if t.state != "SETTLED"), "SETTLED")


async def _show_progress(engine: Any, t: _DemoTrade, t0: float, echo: Any, tag: str) -> None:
    """Print the trade's new audit entries; note its state, and when it finished."""
    if not math.isnan(t.finished):
        return
    trade_id = t.signed.instruction.tradeId
    for entry in (await engine.store.audit(trade_id))[t.shown:]:
        t.shown += 1
        detail = {k: v for k, v in entry.items() if k in ("tx", "block", "chain", "from", "to", "gas", "reason",
                                                           "t_st", "t_sc")}
        echo(f"  +{time.monotonic() - t0:6.2f}s {tag} {entry['event']:<18} "
             + " ".join(f"{k}={v}" for k, v in detail.items()))
    rec = await engine.store.get(trade_id)
    assert rec is not None
    t.state = rec.state.value
    if rec.state in TERMINAL:
        t.finished = time.monotonic() - t0


def demo(echo: Any = print) -> str:
    up(DevnetOptions(), echo=echo)
    return asyncio.run(run_demo(echo))


async def _same_ledger(echo: Any, settings: Settings | None = None) -> str:
    """Deploy both tokens on one throw-away anvil and settle through AtomicDvP, with the devnet's Redis (db 1)."""
    from deploy.devnet import ROLES, _deploy, dev_account, env_lines
    from deploy.processes import AnvilProcess, free_port

    settings = settings or devnet_settings()[0]
    node = AnvilProcess(17004, free_port(), 1.0).start()
    try:
        doc = await _deploy(DevnetOptions(), node.url, node.url, settings.redis_url.rsplit("/", 1)[0] + "/1")
        env = dict(line.split("=", 1) for line in env_lines(doc, 1.0) if "=" in line and not line.startswith("#"))
        fields = {k.removeprefix("DVP_").lower(): v for k, v in env.items() if k.startswith("DVP_")}
        fields.pop("demo_pts_key", None)
        same = Settings.model_validate(fields | {"st_ws_url": "", "sc_ws_url": ""})
        from relayer.store import Store, cursor_key

        # db 1 holds the cursors of the previous throw-away chain: those two keys go, nothing else (the Redis
        # may be someone else's: `devnet up` reuses one listening on its port, and never flushes it)
        scratch = Store.from_url(same.redis_url)
        await scratch.r.delete(cursor_key("st"), cursor_key("sc"))
        await scratch.close()
        echo(f"same-ledger demo: ST and SC on one anvil ({node.url}), AtomicDvP {doc['st']['dvp']}")
        return await run_demo(echo, settings=same, pts_key=dev_account(ROLES["pts"]).key.hex())
    finally:
        node.stop()


def same_ledger_demo(echo: Any = print) -> str:
    """Both tokens on one throw-away chain: the relayer picks the one-transaction AtomicDvP path by itself."""
    up(DevnetOptions(), echo=echo)
    return asyncio.run(_same_ledger(echo))
