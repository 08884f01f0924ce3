"""Network faults between the worker and a node (issue 18), through a TCP proxy the harness owns
(chaos/netproxy.py): a primary that accepts connections and never answers is left for the standby within the
request timeout; a worker cut off from the ST chain while the coin ledger shows the buyer's lock never reveals
the secret, and reveals once the path is back."""

from __future__ import annotations

import pytest

import time
from urllib.parse import urlparse

from chaos.netproxy import BLACKHOLE, DELAY, PASS, NetProxy
from deploy.processes import free_port
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive, drive_together

pytestmark = pytest.mark.slow  # fault injection: `make test-slow` (CI runs it after `make test`)


async def _proxy(url: str) -> NetProxy:
    u = urlparse(url)
    return await NetProxy(u.hostname or "127.0.0.1", u.port or 80, free_port()).start()


async def _events(engine, tid: str) -> list[str]:
    return [e["event"] for e in await engine.store.audit(tid)]


async def test_a_blackholed_primary_is_left_for_the_standby_within_the_request_timeout(net: Net):
    real = net.doc["st"]["rpc_url"]
    proxy = await _proxy(real)
    engine = await net.engine([net.seller, net.buyer], st_rpc_url=proxy.url, st_rpc_standby_urls=real,
                              rpc_timeout=1.0)
    try:
        proxy.set(DELAY, latency=0.05, jitter=0.05)  # a slow path first: everything still works through it
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == TradeState.ST_LOCKED
        side = next(s for s in engine.sides if s.name == "st")
        assert side.ledger.chain.active_url == proxy.url
        proxy.set(BLACKHOLE)  # connections open, nothing answers
        started = time.monotonic()
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED, await _events(engine, tid)
        assert side.ledger.chain.active_url == real
        assert time.monotonic() - started < 45
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_a_slow_primary_is_left_for_the_clear_standby_and_the_trade_settles(net: Net):
    """A path that delays every chunk 2.5 s answers, so no request fails and nothing failed over: a restarted
    worker read a reveal through it too late while the standby was clear (chaos seed 7, `net_delay`). A request
    it keeps waiting past `rpc_slow_after` compares the endpoints' heads, and the worker moves to the standby."""
    from relayer import metrics

    real = net.doc["sc"]["rpc_url"]
    proxy = await _proxy(real)
    engine = await net.engine([net.seller, net.buyer], sc_rpc_url=proxy.url, sc_rpc_standby_urls=real,
                              rpc_slow_after=0.5)
    try:
        side = next(s for s in engine.sides if s.name == "sc")
        await side.ledger.chain.block_number()  # a worker that ran before its path got slow has seen the head
        proxy.set(DELAY, latency=2.5)
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED, await _events(engine, tid)
        assert side.ledger.chain.active_url == real
        assert metrics.RPC_ENDPOINT_SLOW.labels("sc")._value.get() >= 1
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_a_seller_cut_off_from_the_st_chain_never_reveals_and_reveals_once_it_is_back(net: Net):
    """Two firms: the buyer's locks the SC while the seller's worker cannot reach the ST chain (blackholed, the
    chain goes on). The seller sees the SC lock but must not claim it: the buyer could not claim the ST in time."""
    proxy = await _proxy(net.doc["st"]["rpc_url"])
    seller_firm = await net.engine([net.seller], st_rpc_url=proxy.url, rpc_timeout=1.0)
    buyer_firm = await net.engine([net.buyer])
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await seller_firm.intake(signed) and await buyer_firm.intake(signed)
        assert (await drive(seller_firm, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == \
            TradeState.ST_LOCKED
        proxy.set(BLACKHOLE)
        assert (await drive(buyer_firm, [tid], until={TradeState.SC_LOCKED}, timeout=30))[tid] == \
            TradeState.SC_LOCKED
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the seller's worker runs on, the SC lock in view, the ST chain not
            try:
                await seller_firm.step()
            except Exception:  # noqa: BLE001 - a round may fail while a chain is unreachable; the worker goes on
                pass
        assert not [e for e in await _events(seller_firm, tid) if e.startswith("claim_sc")]
        assert (await buyer_firm.store.get(tid)).state == TradeState.SC_LOCKED  # nothing revealed on chain
        proxy.set(PASS)
        assert await drive_together([seller_firm, buyer_firm], tid) == {TradeState.SETTLED}, \
            await _events(seller_firm, tid)
    finally:
        await close_engine(seller_firm)
        await close_engine(buyer_firm)
        await proxy.stop()


async def test_a_worker_started_while_one_chain_hangs_starts_the_others_at_once_and_that_one_later(net: Net):
    """Chaos seed 42 (three chains): a worker restarted while the `st` node hung started its ledgers one after
    another, so the coin ledger and the second ST platform waited for st's request timeout and a reveal's ST
    claim on st2 went out too late (ONE-SIDED). Each ledger starts on its own; one that hangs is left to the
    rounds, which start it once it answers."""
    real = net.doc["st"]["rpc_url"]
    proxy = await _proxy(real)
    proxy.set(BLACKHOLE)  # connections open, nothing answers: every st request waits for the timeout
    rpc_timeout = 10.0
    settings = net.settings([net.seller, net.buyer], st_rpc_url=proxy.url, rpc_timeout=rpc_timeout)
    from relayer.service import build_engine
    from relayer.store import Store

    engine = build_engine(settings, Store.from_url(settings.redis_url))
    try:
        started = time.monotonic()
        await engine.start()
        took = time.monotonic() - started
        sides = {s.name: s for s in engine.sides}
        assert sides["sc"].follower is not None  # the coin ledger is followed although st does not answer
        assert sides["st"].follower is None
        assert took < rpc_timeout / 2, f"start waited {took:.1f} s for the hanging chain"
        proxy.set(PASS)  # st answers again: a round starts its follower
        deadline = time.monotonic() + 30
        while sides["st"].follower is None:
            assert time.monotonic() < deadline, "the rounds never started the st ledger"
            await engine.step()
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=90))[tid] == TradeState.SETTLED, await _events(engine, tid)
    finally:
        await close_engine(engine)
        await proxy.stop()
