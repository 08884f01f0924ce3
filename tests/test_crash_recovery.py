"""SIGKILL the real worker process right after each step of a trade; a restarted worker completes it."""

from __future__ import annotations

import asyncio
import time

import pytest

from relayer.protocol.states import TERMINAL, TradeState
from relayer.store import Store
from tests.relayer_kit import Net, Worker


async def _wait_for(store: Store, tid: str, predicate, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = await store.audit(tid)
        if predicate(events):
            return events
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out; audit so far: {[e['event'] for e in await store.audit(tid)]}")


async def _intake(settings, signed) -> None:
    """Accept a trade the way a worker's API would, before any worker runs."""
    from relayer.service import build_engine, close_engine

    engine = build_engine(settings, Store.from_url(settings.redis_url))
    await engine.start()
    await engine.intake(signed)
    await close_engine(engine)


def _has(event: str, **match):
    return lambda evs: any(e["event"] == event and all(e.get(k) == v for k, v in match.items()) for e in evs)


async def _redis_dump(store: Store) -> str:
    parts = []
    async for key in store.r.scan_iter("*"):
        kind = await store.r.type(key)
        if kind == "hash":
            parts += [f"{k}={v}" for k, v in (await store.r.hgetall(key)).items()]
        elif kind == "list":
            parts += await store.r.lrange(key, 0, -1)
        elif kind == "zset":
            parts += await store.r.zrange(key, 0, -1)
        elif kind == "string":
            parts.append(await store.r.get(key))
        parts.append(key)
    return "\n".join(parts).lower()


async def _claimed_preimage(settings, rec) -> bytes:
    from web3 import AsyncWeb3

    from adapters.contracts import abi, swap_id

    ins = rec.signed.instruction
    w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(settings.sc_rpc_url))
    escrow = w3.eth.contract(address=settings.sc_escrow, abi=abi("HashedTimelockEscrow"))
    logs = await escrow.events.Claimed().get_logs(
        from_block=0, argument_filters={"swapId": swap_id(ins.buyerScAccount, ins.trade_id_bytes)})
    await w3.provider.disconnect()
    return bytes(logs[0]["args"]["preimage"])


async def assert_no_plaintext_secrets(store: Store, settings, tid: str, log_text: str,
                                      extra: frozenset[str] = frozenset()) -> None:
    """The HTLC secret, every raw private key and `extra` (PINs, passphrases, keys kept elsewhere): absent from the
    worker's logs and from every Redis value."""
    import base64

    from relayer.secrets import SecretBox

    rec = await store.get(tid)
    if rec.get("secret"):
        secret = SecretBox(settings.secret_key.get_secret_value()).open(rec.fields["secret"], tid)
    else:  # archived: the sealed copy is gone; the settled trade's secret is public in the SC Claimed event
        secret = await _claimed_preimage(settings, rec)
    needles = {secret.hex(), base64.b64encode(secret).decode().lower()}
    needles |= {k.strip().removeprefix("0x").lower() for k in settings.party_keys.get_secret_value().split(",") if k}
    needles |= {n.lower() for n in extra}
    needles.add(settings.secret_key.get_secret_value().lower())
    haystacks = {"logs": log_text.lower(), "redis": await _redis_dump(store)}
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"a secret appears in plaintext in {where}"
    # logs are JSON lines, and each line about a trade names it (a batch transaction's line names all of its trades)
    import json

    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    for line in lines:
        if line["event"] in ("tx_sent", "tx_mined", "trade_state", "secret_created"):
            assert line.get("trade_id") or (line["event"].startswith("tx_") and line.get("trade_ids")), line


KILL_POINTS = {
    "after_secret_persisted": _has("secret_created"),
    "after_st_lock_sent": _has("lock_st_sent"),
    "at_st_locked": _has("state", to="ST_LOCKED"),
    "after_sc_lock_sent": _has("lock_sc_sent"),
    "at_sc_locked": _has("state", to="SC_LOCKED"),
    "after_claims_sent": _has("claim_sc_sent"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_sigkill_after_each_step_then_restart_settles(net: Net, tmp_path, point: str):
    settings = net.settings([net.seller, net.buyer])
    store = Store.from_url(settings.redis_url)
    log = tmp_path / "worker.log"
    try:
        await store.r.flushdb()
        signed = await net.instruction(stAmount=3, scAmount=3_000)
        tid = signed.instruction.tradeId
        buyer_st = await net.balance(net.st, net.st_token, net.buyer.address)
        seller_sc = await net.balance(net.sc, net.sc_token, net.seller.address)
        await _intake(settings, signed)

        worker = Worker(settings, log).start()
        try:
            await _wait_for(store, tid, KILL_POINTS[point])
        finally:
            worker.kill()
        killed_at = [e["event"] for e in await store.audit(tid)]
        state_at_kill = (await store.get(tid)).state  # type: ignore[union-attr]
        print(point, state_at_kill, killed_at)
        assert state_at_kill != TradeState.SETTLED, "the kill came too late to test recovery"
        worker = Worker(settings, log).start()
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                rec = await store.get(tid)
                if rec and rec.state in TERMINAL:
                    break
                await asyncio.sleep(0.1)
        finally:
            assert worker.terminate() == 0  # graceful on SIGTERM
        rec = await store.get(tid)
        assert rec is not None and rec.state == TradeState.SETTLED, (killed_at, [e["event"] for e in await store.audit(tid)])
        assert await net.balance(net.st, net.st_token, net.buyer.address) == buyer_st + 3
        assert await net.balance(net.sc, net.sc_token, net.seller.address) == seller_sc + 3_000
        # exactly one lock per leg was ever mined, whatever the crash point
        events = [e["event"] for e in await store.audit(tid)]
        assert events.count("lock_st_mined") <= 1 and events.count("lock_sc_mined") <= 1
        await assert_no_plaintext_secrets(store, settings, tid, log.read_text())
    finally:
        await store.r.flushdb()
        await store.close()


async def test_sigterm_mid_trade_finishes_in_flight_sends_and_resumes(net: Net, tmp_path):
    settings = net.settings([net.seller, net.buyer])
    store = Store.from_url(settings.redis_url)
    log = tmp_path / "worker.log"
    try:
        await store.r.flushdb()
        signed = await net.instruction(stAmount=2, scAmount=2_000)
        tid = signed.instruction.tradeId
        await _intake(settings, signed)
        worker = Worker(settings, log).start()
        await _wait_for(store, tid, _has("lock_st_sent"))
        assert worker.terminate() == 0  # SIGTERM: graceful
        events = [e["event"] for e in await store.audit(tid)]
        assert "lock_st_mined" in events, events  # the in-flight send was seen through before exiting
        assert '"event": "worker_stopped"' in log.read_text()
        worker = Worker(settings, log).start()
        try:
            await _wait_for(store, tid, _has("state", to="SETTLED"))
        finally:
            assert worker.terminate() == 0
    finally:
        await store.r.flushdb()
        await store.close()


async def test_worker_started_while_a_chain_is_down_runs_the_other_with_readiness_red(net: Net, tmp_path):
    import aiohttp

    from deploy.processes import free_port, port_open

    api_port, dead_port = free_port(), free_port()
    settings = net.settings([net.seller, net.buyer], api_port=api_port, st_rpc_url=f"http://127.0.0.1:{dead_port}")
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 20
        while not port_open(api_port):
            assert time.monotonic() < deadline and worker.proc.poll() is None, "worker exited"
            await asyncio.sleep(0.1)
        while not all(m in (tmp_path / "worker.log").read_text() for m in ('"chain_not_started"', '"engine_started"')):
            assert time.monotonic() < deadline and worker.proc.poll() is None, "worker exited or never started"
            await asyncio.sleep(0.1)
        assert worker.proc.poll() is None  # still alive, waiting for the chain
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{api_port}/readyz") as r:
                body = await r.json()
        # not ready (the ST chain is down), but running: it follows the coin ledger and protects that leg
        assert r.status == 503 and body["checks"]["st"] is not True
        log = (tmp_path / "worker.log").read_text()
        assert '"chain_not_started"' in log and '"engine_started"' in log
    finally:
        assert worker.terminate() == 0


async def test_a_cursor_another_chain_left_under_the_ledger_name_is_not_trusted(net: Net):
    """A devnet redeployed (or a ledger renamed) under a kept Redis: the `st` cursor was written on chain 999.
    The follower starts at the configured start block, not at that foreign height; a cursor of this chain is
    resumed from."""
    from relayer.service import build_engine, close_engine

    settings = net.settings([net.seller])
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    st_chain_id = net.doc["st"]["chain_id"]
    for cursor_chain_id, expected in ((999, settings.st_start_block - 1), (st_chain_id, 7)):
        await store.set_cursor("st", 7 if cursor_chain_id == st_chain_id else 10**6, "0x" + "ab" * 32,
                               cursor_chain_id)
        engine = build_engine(settings, Store.from_url(settings.redis_url))
        await engine.start()
        try:
            side = next(s for s in engine.followers.sides if s.name == "st")
            assert side.follower is not None and side.follower.height == expected
        finally:
            await close_engine(engine)
    await store.close()
