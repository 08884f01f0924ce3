"""`dvp-relayer demo`: one cross-chain settlement on the local devnet, every step printed as it happens."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from dotenv import dotenv_values

from adapters.contracts import encode_call
from deploy.devnet import DEVNET_DIR, DevnetOptions, up
from relayer.config import Settings
from relayer.errors import ConfigError
from relayer.logging import configure
from relayer.protocol.instruction import TradeInstruction, sign_instruction
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


async def run_demo(echo: Any = print, st_amount: int = 100, price: int = 98_500,
                   settings: Settings | None = None, pts_key: str | None = None) -> str:
    if settings is None:
        settings, env = devnet_settings()
        pts_key = env["DVP_DEMO_PTS_KEY"]
    configure("WARNING")
    engine = build_engine(settings)
    await engine.start()
    st_chain, sc_chain = engine.st.ledger.chain, engine.sc.ledger.chain
    accounts = list(settings.accounts())
    seller, buyer = accounts[0], accounts[1]
    st_token, sc_token = sorted(settings.st_token_set())[0], sorted(settings.sc_token_set())[0]
    now = await st_chain.now()
    st_id, sc_id = await st_chain.connect(), await sc_chain.connect()
    if pts_key is None:
        raise ConfigError("the demo needs a PTS key to sign with (DVP_DEMO_PTS_KEY in devnet.env)")
    ins = TradeInstruction(
        tradeId="0x" + os.urandom(32).hex(), stChainId=st_id, stToken=st_token, stAmount=st_amount,
        scChainId=sc_id, scToken=sc_token, scAmount=st_amount * price,
        sellerStAccount=seller, sellerScAccount=seller, buyerScAccount=buyer, buyerStAccount=buyer,
        deadline=now + 600,
    )
    signed = sign_instruction(ins, pts_key, settings.domain_salt())

    async def balances() -> dict[str, int]:
        return {
            "seller ST": await _balance(st_chain, st_token, seller), "buyer ST": await _balance(st_chain, st_token, buyer),
            "seller SC": await _balance(sc_chain, sc_token, seller), "buyer SC": await _balance(sc_chain, sc_token, buyer),
        }

    before = await balances()
    echo(f"trade {ins.tradeId}")
    echo(f"  seller {seller} delivers {st_amount} ST; buyer {buyer} pays {ins.scAmount} SC")
    t0 = time.monotonic()
    await engine.intake(signed)
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    shown = 0
    state = "MATCHED"
    finished = float("nan")
    try:
        while time.monotonic() - t0 < 300:
            for entry in (await engine.store.audit(ins.tradeId))[shown:]:
                shown += 1
                detail = {k: v for k, v in entry.items() if k in ("tx", "block", "chain", "from", "to", "gas", "reason",
                                                                   "t_st", "t_sc")}
                echo(f"  +{time.monotonic() - t0:6.2f}s  {entry['event']:<18} "
                     + " ".join(f"{k}={v}" for k, v in detail.items()))
            rec = await engine.store.get(ins.tradeId)
            assert rec is not None
            state = rec.state.value
            if rec.state in TERMINAL:
                finished = time.monotonic() - t0
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await runner
    after = await balances()
    echo(f"final state: {state} after {finished:.2f}s")
    for k in before:
        echo(f"  {k:<10} {before[k]:>16} -> {after[k]:>16}  ({after[k] - before[k]:+})")
    await close_engine(engine)
    return state


def demo(echo: Any = print) -> str:
    up(DevnetOptions(), echo=echo)
    return asyncio.run(run_demo(echo))


async def _same_ledger(echo: Any, settings: Settings | None = None) -> str:
    """Deploy both tokens on one throw-away anvil and settle through AtomicDvP, with the devnet's Redis (db 1)."""
    from deploy.devnet import ROLES, _deploy, dev_account, env_lines
    from deploy.processes import AnvilProcess, free_port

    settings = settings or devnet_settings()[0]
    node = AnvilProcess(17003, free_port(), 1.0).start()
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
