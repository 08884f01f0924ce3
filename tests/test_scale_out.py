"""Scale-out on one Redis: the intake stream's consumer group, per-trade leases with fencing, and several
worker processes splitting the trades while each account keeps exactly one signer."""

from __future__ import annotations

import asyncio
import time

import pytest

from relayer.errors import FencedOut
from relayer.protocol.states import TradeState
from relayer.store import INTAKE, WORKERS, Store, lease_key
from tests.relayer_kit import Net, submit_trades, wait_all_settled, worker_pool


@pytest.fixture
async def store(redis_server):
    s = Store.from_url(redis_server.url.replace("/0", "/15"))
    await s.r.flushdb()
    yield s
    await s.r.flushdb()
    await s.close()


async def test_a_worker_whose_trade_lease_passed_on_cannot_write_the_trade(store: Store, net: Net):
    signed = await net.instruction()
    tid = signed.instruction.tradeId
    assert await store.create(signed, TradeState.MATCHED, "test")
    first = (await store.hold_trade_leases([tid], "relayer@a:1:1:1", 5_000))[tid]
    assert first == "relayer@a:1:1:1#1"
    rec = await store.get(tid)
    await store.update(rec, {"note": "a"}, actor="a", event=None, fence=first)
    # a's lease lapses (a paused process); b takes the trade with the next fencing number
    await store.r.delete(lease_key(f"trade:{tid}"))
    second = (await store.hold_trade_leases([tid], "relayer@b:2:2:2", 5_000))[tid]
    assert second == "relayer@b:2:2:2#2"
    assert (await store.hold_trade_leases([tid], "relayer@a:1:1:1", 5_000))[tid] == second  # not given back
    rec = await store.get(tid)
    with pytest.raises(FencedOut):
        await store.update(rec, {"state": "ABORTED"}, actor="a", event="state", fence=first)
    assert (await store.get(tid)).state == TradeState.MATCHED  # nothing written
    await store.update(rec, {"note": "b"}, actor="b", event=None, fence=second)
    assert (await store.hold_trade_leases(["0xnone"], "relayer@a:1:1:1", 5_000)) == {"0xnone": ""}


async def test_intake_entries_read_by_a_dead_consumer_are_claimed_by_another(store: Store):
    for i in range(3):
        await store.enqueue_intake(f"0x{i:064x}")
    got = await store.read_intake("dead-worker", count=10, min_idle_ms=60_000)
    assert [t for _, t in got] == [f"0x{i:064x}" for i in range(3)]  # delivered once, never acked
    assert await store.read_intake("live-worker", count=10, min_idle_ms=60_000) == []  # not idle long enough
    await asyncio.sleep(0.05)
    claimed = await store.read_intake("live-worker", count=10, min_idle_ms=10)
    assert sorted(t for _, t in claimed) == [f"0x{i:064x}" for i in range(3)]
    await store.ack_intake([e for e, _ in claimed])
    assert await store.read_intake("live-worker", count=10, min_idle_ms=0) == []
    assert await store.r.xlen(INTAKE) == 0


async def test_three_workers_split_the_trades_and_route_locks_to_the_account_signer(net: Net, tmp_path):
    settings, store, workers = await worker_pool(net, tmp_path, 3)
    try:
        deadline = time.monotonic() + 30
        while True:  # two accounts, three workers: each account has one signer, on different workers
            s = await store.lease_holder(f"account:{net.seller.address}")
            b = await store.lease_holder(f"account:{net.buyer.address}")
            if s and b and s != b and await store.r.zcard(WORKERS) == 3:
                break
            assert time.monotonic() < deadline, (s, b)
            await asyncio.sleep(0.2)
        ids = await submit_trades(net, settings, 24, 500)
        await wait_all_settled(store, ids, 120)
        drivers = set()
        for tid in ids:
            audit = await store.audit(tid)
            events = [e["event"] for e in audit]
            assert events.count("lock_st_mined") == 1 and events.count("lock_sc_mined") == 1
            drivers |= {e["actor"] for e in audit if e["event"] == "state"}
        assert len(drivers) >= 2, drivers  # the trades were driven by more than one worker
        logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
        assert '"action_routed"' in logs  # some lock needed an account another worker signs for
    finally:
        for w in workers:
            if w.proc.poll() is None:
                assert w.terminate() == 0
        assert await store.r.zcard(WORKERS) == 0  # each left on SIGTERM
        await store.r.flushdb()
        await store.close()
