"""Several worker processes on one Redis with the same keys: one signer per account, takeover when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from relayer.protocol.states import TradeState
from relayer.store import Store
from tests.relayer_kit import Net, Worker, submit_trades, wait_all_settled, worker_pool


async def _holder_pid(store: Store, account: str) -> int | None:
    token = await store.lease_holder(f"account:{account}")
    return int(token.split(":")[1]) if token else None


async def test_three_workers_two_killed_every_trade_settles(net: Net, tmp_path):
    settings, store, workers = await worker_pool(net, tmp_path, 3)
    try:
        deadline = time.monotonic() + 20
        while await _holder_pid(store, net.seller.address) is None:
            assert time.monotonic() < deadline, "no worker took the account lease"
            await asyncio.sleep(0.1)
        ids = await submit_trades(net, settings, 12, 100)
        killed = []
        for n in range(2):  # kill whoever signs for the seller, twice, while trades are in flight
            await asyncio.sleep(0.3)
            if n == 0:
                states_now = [(await store.get(t)).state for t in ids]
                assert any(s != TradeState.SETTLED for s in states_now)  # really mid-run
            limit = time.monotonic() + 15
            while (pid := await _holder_pid(store, net.seller.address)) is None or pid in killed:
                assert time.monotonic() < limit, "no standby took over the account lease"
                await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        await wait_all_settled(store, ids, 90)
        limit = time.monotonic() + 15  # the last killed holder's lease lapses, the survivor takes it
        while (survivor := await _holder_pid(store, net.seller.address)) in killed or survivor is None:
            assert time.monotonic() < limit, "the surviving worker never took the account"
            await asyncio.sleep(0.2)
        assert survivor in [w.proc.pid for w in workers]
        for tid in ids:  # one lock per leg, whatever the takeovers
            events = [e["event"] for e in await store.audit(tid)]
            assert events.count("lock_st_mined") <= 1 and events.count("lock_sc_mined") <= 1
        logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
        assert logs.count('"account_leases"') >= 3  # first holder, then two takeovers
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.terminate()
            else:
                w._log.close()
        await store.r.flushdb()
        await store.close()


async def test_a_standby_never_signs_while_the_lease_is_held(net: Net, tmp_path):
    settings = net.settings([net.seller, net.buyer], lease_ttl=2.0)
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    a = Worker(settings, tmp_path / "a.log").start()
    b = Worker(settings, tmp_path / "b.log").start()
    try:
        deadline = time.monotonic() + 20
        while await _holder_pid(store, net.seller.address) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # an observation window, not a synchronisation: several renewals later a live worker still holds it
        await asyncio.sleep(3 * settings.lease_ttl)
        holder = await _holder_pid(store, net.seller.address)
        assert holder in (a.proc.pid, b.proc.pid)
        assert await _holder_pid(store, net.buyer.address) in (a.proc.pid, b.proc.pid)
    finally:
        assert a.terminate() == 0 and b.terminate() == 0
        # a graceful stop releases the leases at once
        assert await store.lease_holder(f"account:{net.seller.address}") is None
        await store.r.flushdb()
        await store.close()
