"""Redis answering reads but refusing every write (NOREPLICAS: a Sentinel group's replica restarting under
min-replicas-to-write 1; OOM; MISCONF): the worker still makes the claims the chains allow, on real anvils."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from adapters.contracts import swap_id
from adapters.htlc import HtlcLedger
from deploy.processes import RedisProcess, free_port
from relayer.coordination import Coordinator
from relayer.protocol.states import TradeState
from relayer.store import Store, refuses_writes
from tests.relayer_kit import Net, Worker, close_engine, drive, wait_all_settled



async def _seller_locks_then_goes_down(seller_firm, tid: str) -> bytes:
    """The seller's firm locks the ST, then goes down before it could reveal; its secret, for a reveal by hand."""
    for _ in range(600):
        await seller_firm.step()
        if (await seller_firm.store.get(tid)).state is TradeState.ST_LOCKED:
            break
    await seller_firm.drain()
    secret = seller_firm.box.open((await seller_firm.store.get(tid)).fields["secret"], tid)
    await close_engine(seller_firm)
    return secret


async def _refuse_writes(url: str, refuse: bool) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        await r.config_set("min-replicas-to-write", 1 if refuse else 0)
    finally:
        await r.aclose()


@pytest.mark.slow  # two firms' engines on the chains: `make test-slow` (CI runs it)
async def test_the_buyers_st_claim_goes_out_after_the_reveal_while_its_redis_refuses_every_write(net: Net, tmp_path):
    """The buyer's firm: its Redis refuses writes from before the seller's reveal until after the ST claim, longer
    than a lease TTL. The claim needs nothing written (the secret is on the coin ledger, the ST lock in the
    index): it must go out, and the audit entries it could not write then are written once Redis takes writes."""
    buyer_redis = RedisProcess(free_port(), tmp_path / "buyer-redis").start()
    seller_firm = await net.engine([net.seller])
    buyer_firm = await net.engine([net.buyer], redis_url=buyer_redis.url, lease_ttl=2.0)
    try:
        signed = await net.instruction(stAmount=4, scAmount=4_000)
        ins = signed.instruction
        tid = ins.tradeId
        assert await seller_firm.intake(signed) and await buyer_firm.intake(signed)
        secret = await _seller_locks_then_goes_down(seller_firm, tid)
        seller_firm = None
        assert (await drive(buyer_firm, [tid], until={TradeState.SC_LOCKED}))[tid] is TradeState.SC_LOCKED
        await buyer_firm.drain()
        t_sc = int((await buyer_firm.store.get(tid)).fields["t_sc"])
        st_before = await net.balance(net.st, net.st_token, net.buyer.address)

        await _refuse_writes(buyer_redis.url, True)
        refusing_since = time.monotonic()
        while time.monotonic() < refusing_since + 3.0:  # past the buyer's lease TTL (2 s) with writes refused
            await buyer_firm.step()
            await asyncio.sleep(0.05)
        # the seller reveals: its own SC claim, sent by hand (its firm is down)
        claim = HtlcLedger.single_call("claim", (secret, swap_id(ins.buyerScAccount, ins.trade_id_bytes),
                                                 ins.scToken, ins.scAmount, ins.sellerScAccount, t_sc))
        seller_sc = net.sender(net.sc, net.seller)
        receipt = await seller_sc.wait(await seller_sc.send(net.doc["sc"]["escrow"], claim))
        assert receipt["status"] == 1

        deadline = time.monotonic() + 30
        while await net.balance(net.st, net.st_token, net.buyer.address) == st_before:
            assert time.monotonic() < deadline, "no ST claim while the buyer's Redis refused writes"
            await buyer_firm.step()
            await asyncio.sleep(0.05)
        assert buyer_firm.coordinator.refusing_since is not None
        with pytest.raises(Exception, match="NOREPLICAS"):  # still refusing: the claim needed no write
            await buyer_firm.store.add_audit(tid, "test", "probe")

        await _refuse_writes(buyer_redis.url, False)
        assert (await drive(buyer_firm, [tid]))[tid] is TradeState.SETTLED
        await buyer_firm.drain()
        events = [e["event"] for e in await buyer_firm.store.audit(tid)]
        assert "claim_st_sent" in events and "claim_st_mined" in events, events  # written once Redis took writes
    finally:
        if seller_firm is not None:
            await close_engine(seller_firm)
        await close_engine(buyer_firm)
        buyer_redis.stop()



@pytest.mark.slow  # worker processes on the chains: `make test-slow` (CI runs it)
async def test_a_buyer_worker_killed_and_started_again_while_its_redis_refuses_writes_still_claims_the_st(
        net: Net, tmp_path):
    """The chaos run's window: Redis refuses writes (a Sentinel group's replica restarting), the worker is killed
    and started again meanwhile. The new process cannot take the dead one's leases (a write), yet nobody else can
    either: it must still claim the ST after the reveal, and settle once Redis takes writes."""
    buyer_redis = RedisProcess(free_port(), tmp_path / "buyer-redis").start()
    seller_firm = await net.engine([net.seller])
    settings = net.settings([net.buyer], redis_url=buyer_redis.url, lease_ttl=2.0, api_port=free_port())
    store = Store.from_url(settings.redis_url)
    workers = []
    try:
        signed = await net.instruction(stAmount=3, scAmount=3_000)
        ins = signed.instruction
        tid = ins.tradeId
        assert await seller_firm.intake(signed)
        intake = await net.engine([net.buyer], redis_url=buyer_redis.url)
        assert await intake.intake(signed)
        await close_engine(intake)
        secret = await _seller_locks_then_goes_down(seller_firm, tid)
        seller_firm = None

        workers.append(Worker(settings, tmp_path / "worker-1.log").start())
        await workers[-1].api_up(settings.api_port)
        deadline = time.monotonic() + 60
        while (await store.get(tid)).state is not TradeState.SC_LOCKED:
            assert time.monotonic() < deadline, "the buyer's worker did not lock the SC"
            await asyncio.sleep(0.1)
        t_sc = int((await store.get(tid)).fields["t_sc"])
        st_before = await net.balance(net.st, net.st_token, net.buyer.address)

        await _refuse_writes(buyer_redis.url, True)
        workers[-1].kill()
        workers.append(Worker(settings, tmp_path / "worker-2.log").start())
        await workers[-1].api_up(settings.api_port)
        await asyncio.sleep(3.0)  # past the lease TTL (2 s): the dead worker's leases lapsed, none could be taken
        claim = HtlcLedger.single_call("claim", (secret, swap_id(ins.buyerScAccount, ins.trade_id_bytes),
                                                 ins.scToken, ins.scAmount, ins.sellerScAccount, t_sc))
        seller_sc = net.sender(net.sc, net.seller)
        assert (await seller_sc.wait(await seller_sc.send(net.doc["sc"]["escrow"], claim)))["status"] == 1

        deadline = time.monotonic() + 30
        while await net.balance(net.st, net.st_token, net.buyer.address) == st_before:
            assert time.monotonic() < deadline, "the restarted worker made no ST claim while Redis refused writes"
            await asyncio.sleep(0.2)
        with pytest.raises(ResponseError, match="NOREPLICAS"):  # still refusing: the claim needed no write
            await store.add_audit(tid, "test", "probe")

        await _refuse_writes(buyer_redis.url, False)
        await wait_all_settled(store, [tid], timeout=60)
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()
        if seller_firm is not None:
            await close_engine(seller_firm)
        await store.close()
        buyer_redis.stop()

def test_only_a_refusal_of_every_write_counts_as_one():
    assert refuses_writes(ResponseError("NOREPLICAS Not enough good replicas to write."))
    assert refuses_writes(ResponseError("Command # 1 (ZADD dvp:workers 1 w) of pipeline caused error: NOREPLICAS "
                                        "Not enough good replicas to write."))
    assert refuses_writes(OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."))
    # the form Redis 6 gives a script's refused write (as its source reads; this machine runs Redis 7)
    assert refuses_writes(ResponseError("ERR Error running script (call to f_0733f0fd): @user_script:5: "
                                        "@user_script: 5: -NOREPLICAS Not enough good replicas to write. "))
    assert refuses_writes(ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently "
                                        "unable to persist to disk."))
    # a replica (another client may be writing to the master), Redis down, or another error quoting the words
    assert not refuses_writes(ReadOnlyError("READONLY You can't write against a read only replica."))
    assert not refuses_writes(RedisConnectionError("Connection refused"))
    assert not refuses_writes(ResponseError("Command # 1 (RPUSH k NOREPLICAS ) of pipeline caused error: WRONGTYPE "
                                            "Operation against a key holding the wrong kind of value"))


async def test_audit_entries_redis_refused_are_kept_in_order_and_written_with_the_next_it_takes(tmp_path):
    server = RedisProcess(free_port(), tmp_path / "redis").start()
    store = Store.from_url(server.url)
    try:
        await store.add_audits([("0x01", "w", "first", {})])
        await _refuse_writes(server.url, True)
        with pytest.raises(ResponseError, match="NOREPLICAS"):  # an ordinary write still fails
            await store.add_audits([("0x01", "w", "lost", {})])
        await store.note("0x01", "w", "claim_st_sent", tx="0xaa")
        await store.add_audits([("0x01", "w", "claim_st_mined", {"block": 7})], keep_if_refused=True)
        assert store.audits_kept == 2
        await _refuse_writes(server.url, False)
        await store.add_audits([("0x01", "w", "after", {})])
        assert store.audits_kept == 0
        assert [e["event"] for e in await store.audit("0x01")] == ["first", "claim_st_sent", "claim_st_mined", "after"]
    finally:
        await store.close()
        server.stop()


NOREPLICAS = ResponseError("Command # 1 (ZADD dvp:workers 1 w) of pipeline caused error: NOREPLICAS Not enough "
                           "good replicas to write.")


class _RefusingStore:
    """Just the store calls the Coordinator makes here; `error` is what Redis answers to a write."""

    def __init__(self, error: Exception | None, workers: tuple[str, ...] = (), holders: dict | None = None) -> None:
        self.error = error
        self.heartbeats = 0
        self.workers = list(workers)
        self.holders = holders or {}

    async def heartbeat(self, token: str, ttl: float) -> list[str]:
        self.heartbeats += 1
        if self.error is not None:
            raise self.error
        return [token]

    async def workers_seen(self, since: float) -> list[str]:
        return self.workers

    async def account_lease_holders(self, names: list[str]) -> dict[str, str | None]:
        return {n: self.holders.get(n) for n in names}

    async def open_trades(self) -> list[str]:
        return ["0xtrade"]

    async def trade_lease_holders(self, ids: list[str]) -> dict[str, str | None]:
        return {t: None for t in ids}

    async def hold_trade_leases(self, ids: list[str], token: str, ttl_ms: int, dead=None) -> dict[str, str]:
        return {t: self.holders[t] for t in ids}


class _Ledger:
    def __init__(self, accounts: list[str]) -> None:
        self.all_senders = {a: object() for a in accounts}
        self.active: set[str] = set()

    async def set_active(self, addresses: set[str]) -> None:
        self.active = set(addresses)


def _coordinator(store: _RefusingStore, held: set[str], refusing: bool, accounts: tuple[str, ...] = ()
                 ) -> Coordinator:
    from types import SimpleNamespace

    from relayer.config import Settings

    sides = [SimpleNamespace(ledger=_Ledger(list(accounts)))] if accounts else []
    coordinator = Coordinator(sides, Settings(_env_file=None, lease_ttl=2.0), store)  # type: ignore[arg-type]
    coordinator.accounts_held = held
    coordinator.lease_valid_until = time.monotonic() - 1  # the lease as last renewed has lapsed
    coordinator.refusing_since = time.monotonic() - 5 if refusing else None
    return coordinator


async def test_past_its_lease_a_worker_signs_only_claims_and_refunds_and_only_while_redis_refuses_every_write():
    store = _RefusingStore(NOREPLICAS)
    coordinator = _coordinator(store, {"0xA"}, refusing=True)
    assert await coordinator.may_send("0xA", needs_no_record=True)
    assert store.heartbeats == 1  # checked with a write right before the send
    assert not await coordinator.may_send("0xA", needs_no_record=False)  # a lock: nothing new starts
    assert not await coordinator.may_send("0xB", needs_no_record=True)  # an account it did not hold
    coordinator.lease_valid_until = time.monotonic() + 60  # within the lease too: nothing new while refusing
    assert not await coordinator.may_send("0xA", needs_no_record=False)
    # Redis down (not answering at all), or a replica answering: it cannot know that nobody took the lease
    for error in (RedisConnectionError("Connection refused"), ReadOnlyError("READONLY You can't write")):
        assert not await _coordinator(_RefusingStore(error), {"0xA"}, refusing=True).may_send("0xA", True)
    # the write went through: Redis takes writes again, so the leases are held as usual, and this one had lapsed
    back = _RefusingStore(None)
    assert not await _coordinator(back, {"0xA"}, refusing=True).may_send("0xA", True)
    assert back.heartbeats == 1
    # never refused: the lapsed lease is the answer
    untouched = _RefusingStore(NOREPLICAS)
    assert not await _coordinator(untouched, {"0xA"}, refusing=False).may_send("0xA", True)
    assert untouched.heartbeats == 0


async def test_a_worker_started_during_a_refusal_adopts_what_nobody_holds_only_when_no_other_worker_is_known():
    """Started while Redis refuses writes, it never held a lease (no send on an unchecked one). It acts on the
    accounts nobody holds only if every worker Redis knows is itself or dead: heartbeats are writes, so a live
    worker elsewhere looks as old as a dead one, and is never taken for gone."""
    import subprocess

    from relayer.leases import HOST, PID_NS, WORKER_TOKEN

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"relayer@{HOST}:{gone.pid}:{PID_NS}:0000"  # a process of this host that has exited
    elsewhere = "relayer@otherhost:1:1:0000"  # cannot be proven dead: on another host

    fresh = _coordinator(_RefusingStore(NOREPLICAS, workers=(dead,)), set(), refusing=False, accounts=("0xA",))
    fresh.lease_valid_until = float("inf")  # as built: no lease asked yet
    await fresh.hold_accounts()
    assert fresh.refusing_since is not None and fresh.lease_valid_until == float("-inf")
    assert fresh.accounts_held == {"0xA"} and fresh.helping == {"0xtrade"}
    assert fresh.sides[0].ledger.active == {"0xA"}
    assert not await fresh.may_send("0xA", needs_no_record=False)

    others = _coordinator(_RefusingStore(NOREPLICAS, workers=(dead, elsewhere, WORKER_TOKEN)), set(),
                          refusing=False, accounts=("0xA",))
    await others.hold_accounts()
    assert others.refusing_since is not None and others.accounts_held == set() and others.helping == set()
    held = _coordinator(_RefusingStore(NOREPLICAS, holders={"account:0xA": elsewhere}), set(), refusing=False,
                        accounts=("0xA",))
    await held.hold_accounts()
    assert held.accounts_held == set()  # held by a live-looking worker: not adopted


async def test_a_trade_lease_that_lapsed_and_was_taken_again_under_our_token_stays_ours_with_its_new_fence():
    """Renewals refused past the TTL: the first renewal Redis takes re-takes the lease under a new fence. The
    trade stays this worker's (it was idle a whole TTL more before); a lease another worker took is let go."""
    from relayer.leases import WORKER_TOKEN

    store = _RefusingStore(None, holders={"0x1": f"{WORKER_TOKEN}#8", "0x2": "relayer@otherhost:1:1:0000#9"})
    coordinator = _coordinator(store, set(), refusing=False)
    coordinator.owned = {"0x1": f"{WORKER_TOKEN}#7", "0x2": f"{WORKER_TOKEN}#8"}
    await coordinator.renew_trades()
    assert coordinator.owned == {"0x1": f"{WORKER_TOKEN}#8"}
