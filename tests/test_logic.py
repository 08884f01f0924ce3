"""The driver and the executor against in-memory fakes of the store and the ledgers (tests/fakes.py): the real
rules, the real chain index, the real calldata; no anvil, no Redis. Milliseconds per test."""

from __future__ import annotations

import hashlib
import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.htlc import ClaimedEvent, HtlcLedger, RefundedEvent
from relayer.actions import Due
from relayer.config import Settings
from relayer.driver import Driver, Round
from relayer.executor import Executor
from relayer.janitor import StrayBook
from relayer.protocol.instruction import sign_instruction
from relayer.protocol.rules import Action
from relayer.protocol.states import TERMINAL, can_transition
from relayer.routing import Routes
from relayer.secrets import SecretBox, generate_key
from tests.fakes import FakeLedger, FakeStore, lock_event, side
from tests.test_protocol import BUYER, PTS, POLICY, SALT, SC_TOKEN, SELLER, ST_TOKEN, instruction

NOW = int(time.time())
CLAIM_BATCH = HtlcLedger.batch_call("claim", [])[:10]  # the claimBatch selector, 0x-hex
ST_ESCROW, SC_ESCROW = "0x" + "e1" * 20, "0x" + "e2" * 20


class _Coordinator:
    lease_valid_until = float("inf")
    refusing_since = None

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    async def may_send(self, account: str, needs_no_record: bool) -> bool:
        return True

    async def route(self, account: str, trade_id: str) -> bool:
        return await self.store.route(account, trade_id, ttl_ms=2000)


SETTINGS = Settings(_env_file=None, confirmations=POLICY.confirmations, block_time=POLICY.block_time,  # type: ignore[call-arg]
                    inclusion_delay=POLICY.inclusion_delay, margin=POLICY.margin, max_clock_skew=POLICY.max_clock_skew,
                    st_lock_duration=POLICY.st_lock_duration, batch_max=1000)


def world(keys_st=(SELLER, BUYER), keys_sc=(SELLER, BUYER), holders=()):
    store = FakeStore()
    st_led, sc_led = FakeLedger("st", ST_ESCROW, list(keys_st)), FakeLedger("sc", SC_ESCROW, list(keys_sc))
    st_side, sc_side = side("st", st_led, NOW, chain_id=1), side("sc", sc_led, NOW, chain_id=2)
    routes = Routes([st_side, sc_side], SETTINGS)
    assert routes.route(instruction()).policy == POLICY  # the fakes decide with the protocol tests' timing
    box = SecretBox(generate_key())
    executor = Executor(routes, SETTINGS, store, box, _Coordinator(store), frozenset(holders))  # type: ignore[arg-type]
    driver = Driver(routes, store, box, StrayBook(store), executor.in_flight, frozenset(holders))  # type: ignore[arg-type]
    return store, st_side, sc_side, box, driver, executor


def new_trade(store: FakeStore, **over):
    ins = instruction(**{"tradeId": "0x" + os.urandom(32).hex(), "deadline": NOW + 3600, **over})
    return store.put(sign_instruction(ins, PTS.key, SALT))


def rnd() -> Round:
    return Round({"st": NOW, "sc": NOW}, time.monotonic())


# ------------------------------------------------------------------ driver


async def test_the_seller_writes_its_intent_before_any_lock_is_due_and_never_the_raw_secret():
    store, st_side, sc_side, box, driver, _ = world()
    rec = new_trade(store)
    out = await driver.advance(rec, rnd(), fence="f")
    assert [d.action for d in out.due] == [Action.LOCK_ST]
    fields = store.fields[rec.trade_id]
    secret = box.open(fields["secret"], rec.trade_id)
    assert hashlib.sha256(secret).hexdigest() == fields["hashlock"] and secret.hex() not in str(store.audits)
    assert store.events(rec.trade_id)[-1] == "secret_created" and int(fields["t_st"]) > NOW


async def test_a_buyer_locks_only_against_the_sellers_lock_with_the_trades_terms():
    store, st_side, sc_side, _, driver, _ = world(keys_st=(), keys_sc=(BUYER,))
    rec = new_trade(store)
    ins = rec.signed.instruction
    h = os.urandom(32)
    wrong = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount - 1, h, NOW + 300)
    st_side.index.apply([wrong])
    out = await driver.advance(rec, rnd(), fence="f")
    notes = store.events(rec.trade_id).count("not_acting")
    assert not out.due and notes >= 1
    again = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert not again.due and store.events(rec.trade_id).count("not_acting") == notes  # audited once, not per round


async def test_the_seller_reveals_against_the_right_sc_lock_and_keeps_a_foreign_lock_as_a_stray():
    store, st_side, sc_side, box, driver, _ = world(keys_st=(SELLER,), keys_sc=(SELLER,))
    rec = new_trade(store)
    await driver.advance(rec, rnd(), fence="f")  # intent: secret, hashlock, T_st
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    st_side.index.apply([lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, h, t_st)])
    foreign = lock_event(ins.trade_id_bytes, "0x" + "66" * 20, SELLER, SC_TOKEN, ins.scAmount, h, t_st - 40)
    right = lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount, h, t_st - POLICY.delta())
    sc_side.index.apply([foreign, right])
    out = await driver.advance(rec, rnd(), fence="f")
    claims = [d for d in out.due if d.action is Action.CLAIM_SC]
    assert len(claims) == 1 and claims[0].sc_ev == right
    assert len(store.strays["sc"]) == 1 and store.strays["sc"][0]["sender"] == foreign.sender
    assert "foreign_lock_ignored" in store.events(rec.trade_id)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["st_lock", "sc_lock", "sc_claim", "st_claim", "late", "expire"]), max_size=8))
def test_once_the_driver_wrote_a_terminal_state_no_later_observation_changes_it(steps):
    """Whatever the chains show next (events in any order, time running out), a trade's recorded state only
    moves along the state machine, and a terminal one stays."""
    import asyncio

    asyncio.run(_observe(steps))


def test_the_observation_walk_reaches_both_ends_of_the_state_machine():
    """The property above is not vacuous: its walks do reach SETTLED and ABORTED."""
    import asyncio

    from relayer.protocol.states import TradeState

    assert asyncio.run(_observe(["st_lock", "sc_lock", "sc_claim", "st_claim"]))[-1] is TradeState.SETTLED
    assert asyncio.run(_observe(["expire", "expire", "expire", "expire", "expire", "expire", "expire", "expire",
                                 "expire", "expire"]))[-1] is TradeState.ABORTED


async def _observe(steps: list[str]) -> list:
    store, st_side, sc_side, _, driver, _ = world()
    rec = new_trade(store)
    now = NOW
    await driver.advance(rec, Round({"st": now, "sc": now}, 0.0), fence="f")
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    st_ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, h, t_st)
    sc_ev = lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount, h, t_st - POLICY.delta())
    seen = [rec.state]
    for step in steps:
        if step == "st_lock":
            st_side.index.apply([st_ev])
        elif step == "sc_lock":
            sc_side.index.apply([sc_ev])
        elif step == "sc_claim" and sc_side.index.locks.get(ins.trade_id_bytes):
            sc_side.index.apply([ClaimedEvent(sc_ev.swap_id, b"\x01" * 32, 95, "0x", 1)])
        elif step == "st_claim" and st_side.index.locks.get(ins.trade_id_bytes):
            st_side.index.apply([ClaimedEvent(st_ev.swap_id, b"\x01" * 32, 96, "0x", 1)])
        elif step in ("late", "expire"):
            now += 400 if step == "expire" else 60
            for s in (st_side, sc_side):
                s.head_timestamp = now
                s.follower.confirmed_timestamp = now  # type: ignore[union-attr]
        rec = store.get(rec.trade_id)
        if rec.state in TERMINAL:
            break  # the engine never advances a terminal trade; the last write below must have been legal
        await driver.advance(rec, Round({"st": now, "sc": now}, 0.0), fence="f")
        seen.append(store.get(rec.trade_id).state)
    for a, b in zip(seen, seen[1:]):
        assert a == b or can_transition(a, b), seen
    terminal = [s for s in seen if s in TERMINAL]
    if terminal:
        assert all(s == terminal[0] for s in seen[seen.index(terminal[0]):]), seen
    return seen


# ------------------------------------------------------------------ executor


def _claims(store, st_side, n, box):
    """n trades whose ST lock is live and whose secret is known: each has a CLAIM_ST due."""
    dues = []
    for _ in range(n):
        rec = new_trade(store)
        ins = rec.signed.instruction
        secret = os.urandom(32)
        ev = st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount,
                                            hashlib.sha256(secret).digest(), NOW + 300))
        rec.fields["secret"] = box.seal(secret, rec.trade_id)
        dues.append(Due(rec, Action.CLAIM_ST, None, ev, None, time.monotonic()))
    return dues


async def test_claims_due_together_go_out_as_one_batch_and_a_claimed_swap_is_left_alone():
    from structlog.testing import capture_logs

    store, st_side, sc_side, _, _, executor = world()
    dues = _claims(store, st_side, 3, executor.box)
    st_side.ledger.slots.pop(dues[2].st_ev.swap_id)  # claimed meanwhile (by the buyer itself, say)
    with capture_logs() as logs:
        executor.dispatch(dues)
        await _settle(executor)
    tx_lines = [(e["event"], e.get("trade_ids")) for e in logs if e["event"].startswith("tx_")]
    ids = [d.rec.trade_id for d in dues[:2]]
    assert sorted(tx_lines) == [("tx_mined", ids), ("tx_sent", ids)]  # one line per transaction, naming both
    sent = [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]
    assert len(sent) == 1 and sent[0][1].startswith(CLAIM_BATCH)
    for d in dues[:2]:
        assert [e.get("batch") for e in store.audits[d.rec.trade_id] if e["event"] == "claim_st_sent"] == [2]
    assert not [e for e in store.audits[dues[2].rec.trade_id] if e["event"].startswith("claim")]


async def test_a_batch_that_would_revert_is_sent_one_by_one_and_only_the_bad_entry_fails():
    store, st_side, sc_side, _, _, executor = world()
    dues = _claims(store, st_side, 3, executor.box)
    sender = st_side.ledger.any_sender([BUYER])
    sender.estimate_reverts = True
    sender.reverting = {dues[1].st_ev.swap_id}
    executor.dispatch(dues)
    await _settle(executor)
    assert len(sender.sent) == 3 and not any(tx[1].startswith(CLAIM_BATCH) for tx in sender.sent)
    outcome = {d.rec.trade_id: [e["event"] for e in store.audits[d.rec.trade_id] if e["event"].startswith("claim")]
               for d in dues}
    assert outcome[dues[1].rec.trade_id] == ["claim_st_sent", "claim_st_failed"]
    assert outcome[dues[0].rec.trade_id] == outcome[dues[2].rec.trade_id] == ["claim_st_sent", "claim_st_mined"]
    assert executor.not_before[dues[1].key] > time.monotonic()  # the failed one cools down before a retry


async def test_redis_refusing_the_record_of_a_sent_claim_is_a_retry_later_not_a_crash():
    """Chaos (Redis failover): a claim was sent and Redis answered NOREPLICAS / refused the connection when the
    worker recorded it. That is an outage, not a bug: a warning and a cooldown, no traceback at error level."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from structlog.testing import capture_logs

    store, st_side, sc_side, _, _, executor = world()
    dues = _claims(store, st_side, 2, executor.box)

    async def refuse(entries, keep_if_refused=False):
        raise RedisConnectionError("Connection refused")

    store.add_audits = refuse  # type: ignore[method-assign]
    with capture_logs() as logs:
        executor.dispatch(dues)
        await _settle(executor)
    failed = [e for e in logs if e["event"] == "action_failed"]
    assert failed and failed[0]["error_type"] == "ConnectionError", logs
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    assert all(executor.not_before[d.key] > time.monotonic() for d in dues)  # cooled down, then re-decided


async def test_only_claims_within_two_delta_of_their_timelock_go_out_before_the_rest_of_the_round_is_decided():
    """Engine._decide dispatches these with their decision batch (a reconciliation of hundreds of trades after an
    outage must not hold a claim racing T_st back); everything else waits for the round's fuller batches."""
    from types import SimpleNamespace

    from relayer.engine import Engine

    store, st_side, sc_side, box, _, executor = world()
    near, far = _claims(store, st_side, 2, box)
    near = Due(near.rec, near.action, None, lock_event(near.rec.signed.instruction.trade_id_bytes, SELLER, BUYER,
                                                       ST_TOKEN, 10, os.urandom(32), NOW + 2 * POLICY.delta() - 1),
               None, time.monotonic())
    lock = Due(far.rec, Action.LOCK_SC, None, near.st_ev, None, time.monotonic())
    engine = SimpleNamespace(routes=executor.routes)
    assert [Engine._racing(engine, d) for d in (near, far, lock)] == [True, False, False]  # type: ignore[arg-type]


async def test_a_lock_whose_account_another_worker_signs_for_is_routed_not_sent():
    store, st_side, sc_side, _, _, executor = world(keys_sc=(BUYER,))
    sc_side.ledger.senders.clear()  # the buyer's account lease is held by another worker
    rec = new_trade(store)
    ins = rec.signed.instruction
    st_ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, os.urandom(32), NOW + 300)
    executor.dispatch([Due(rec, Action.LOCK_SC, None, st_ev, None, time.monotonic())])
    await _settle(executor)
    assert store.routed == [(BUYER, rec.trade_id)]
    assert not sc_side.ledger.all_senders[BUYER].sent


async def test_a_holder_signed_seller_waits_for_its_authorisation_then_its_lock_goes_out_as_lock_with_sig():
    """DVP_HOLDER_SIGNED: no seller key here. The secret is made, T_st is left to the holder; once an authorisation
    is kept (HolderLocks, tested on anvil), the lock is due and goes out as lockWithSig from the gas account, only
    while the holder's escrow nonce is the authorisation's."""
    from relayer.authorizations import LockAuthorization

    store, st_side, sc_side, _, driver, executor = world(keys_st=(BUYER,), keys_sc=(BUYER,), holders=(SELLER,))
    rec = new_trade(store)
    tid = rec.trade_id
    assert not (await driver.advance(rec, rnd(), fence="f")).due
    fields = store.fields[tid]
    assert fields.get("hashlock") and "t_st" not in fields
    ins = rec.signed.instruction
    auth = LockAuthorization("st", ins.trade_id_bytes, ST_TOKEN, ins.stAmount, ins.buyerStAccount,
                             bytes.fromhex(fields["hashlock"]), NOW + 600, 3, NOW + 300, bytes(64) + b"\x1b")
    fields.update({"auth_st": auth.to_json(), "t_st": str(auth.timelock)})
    due = (await driver.advance(store.get(tid), rnd(), fence="f")).due
    assert [d.action for d in due] == [Action.LOCK_ST]
    gas = st_side.ledger.all_senders[BUYER]
    st_side.ledger.holders[SELLER] = (2, 10**18)  # an earlier authorisation of the holder is not used yet
    executor.dispatch(due)
    await _settle(executor)
    assert not gas.sent and "authorization_waiting" in store.events(tid)
    st_side.ledger.holders[SELLER] = (3, 10**18)
    executor.not_before.clear()
    executor.dispatch(due)
    await _settle(executor)
    with_sig = HtlcLedger.signed_lock_call(auth.terms, SELLER, auth.deadline, auth.signature)
    assert [tx[1] for tx in gas.sent] == [with_sig]


async def test_a_lock_the_chain_holds_but_the_node_gave_no_event_for_never_aborts_the_trade():
    """A node that drops logs (issue 18): the trade's deadline passed with no ST lock event, yet the escrow's slot
    for the seller's swap holds one. The trade is not ABORTED (the lock would be left unrefunded); it is alerted
    and that chain is read again from the trade's first block."""
    store, st_side, sc_side, _, driver, _ = world(keys_st=(BUYER,), keys_sc=(BUYER,))
    asked: list[tuple[str, int]] = []
    driver.reread = lambda chain, from_block: asked.append((chain, from_block))
    rec = new_trade(store, deadline=NOW - 1)  # past: with no lock seen anywhere, decide() says ABORTED
    ins = rec.signed.instruction
    store.fields[rec.trade_id]["st_from_block"] = "40"
    st_side.ledger.slots[HtlcLedger.swap_id_of(ins.sellerStAccount, ins.trade_id_bytes)] = b"\x01" * 32
    await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert store.fields[rec.trade_id]["state"] == "MATCHED"
    assert "lock_without_event" in store.events(rec.trade_id) and asked == [("st", 40)]
    st_side.ledger.slots.clear()  # the slot is empty too: nothing was ever locked, the trade aborts
    await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert store.fields[rec.trade_id]["state"] == "ABORTED"


async def test_a_chain_that_hangs_on_the_no_event_check_holds_up_no_decision(monkeypatch):
    """Chaos seed 7: after a Redis failover a worker re-decided every open trade while st2 was partitioned; the
    check that a trade about to be ABORTED has no lock without an event (an inline slot read) waited for the RPC
    timeout per trade, so the ST claims of revealed trades on the other ledgers went out 6 s late (ONE-SIDED).
    The read is bounded; unanswered, the trade is simply not aborted this round, and the chain's other such
    checks are skipped for a moment instead of each waiting again."""
    import asyncio

    from relayer import driver as driver_module
    from relayer.protocol.states import TradeState

    monkeypatch.setattr(driver_module, "NO_EVENT_CHECK_TIMEOUT", 0.3)
    store, st_side, sc_side, _, driver, _ = world(keys_st=(), keys_sc=(BUYER,))
    hung = asyncio.Event()

    async def hangs(sid: bytes) -> bytes:
        await hung.wait()
        return bytes(32)

    st_side.ledger.swap_slot = hangs  # type: ignore[method-assign]
    first, second = new_trade(store, deadline=NOW - 10), new_trade(store, deadline=NOW - 10)
    started = time.monotonic()
    await asyncio.wait_for(driver.advance(first, rnd(), fence="f"), 10)
    took_first = time.monotonic() - started
    await asyncio.wait_for(driver.advance(second, rnd(), fence="f"), 10)
    took_second = time.monotonic() - started - took_first
    assert store.get(first.trade_id).state is TradeState.MATCHED  # unknown is not "no lock": not aborted yet
    assert store.get(second.trade_id).state is TradeState.MATCHED
    assert took_first < 1 and took_second < 0.1, (took_first, took_second)
    hung.set()
    driver.slot_checks.clear()  # the chain answers again
    await driver.advance(store.get(first.trade_id), rnd(), fence="f")
    assert store.get(first.trade_id).state is TradeState.ABORTED


async def test_a_chain_whose_follow_hangs_costs_one_round_its_budget_not_every_round(monkeypatch):
    """Chaos seed 7: with the coin ledger blackholed, every round waited FOLLOW_BUDGET for its follow, so a
    restarted worker's ST claims on the other platforms went out 1.5 s a round late. A follow still hanging
    from an earlier round is not waited for again."""
    import asyncio

    from relayer import follow as follow_module
    from relayer.follow import Followers

    monkeypatch.setattr(follow_module, "FOLLOW_BUDGET", 0.3)
    store, st_side, sc_side, _, _, _ = world()
    hung = asyncio.Event()

    async def follow(side):
        if side is sc_side:
            await hung.wait()
        side.fresh = True
        return True

    followers = Followers([st_side, sc_side], SETTINGS, store, lambda coro: coro.close())  # type: ignore[arg-type]
    followers._follow_or_mark = follow  # type: ignore[method-assign]
    started = time.monotonic()
    assert await followers.follow_all() == [True, False]  # the first round waits its budget for the hung chain
    first = time.monotonic() - started
    assert await followers.follow_all() == [True, False]
    second = time.monotonic() - started - first
    assert first >= 0.27 and second < 0.1, (first, second)
    hung.set()
    await asyncio.sleep(0)
    assert await followers.follow_all() == [True, True]  # answered meanwhile: fresh again


async def test_a_chain_whose_follow_is_a_little_slower_than_the_budget_is_still_fresh_every_other_round(monkeypatch):
    """The other side of the test above (a helper's review): a follow that takes 1.2 x FOLLOW_BUDGET answers. A
    round that did not wait for it again, and a next one that started a new one, would see that chain stale in
    every round, and no claim that needs it would ever go out. A follow whose chain answered in time before is
    waited for into the next round."""
    import asyncio

    from relayer import follow as follow_module
    from relayer.follow import Followers

    monkeypatch.setattr(follow_module, "FOLLOW_BUDGET", 0.2)
    store, st_side, sc_side, _, _, _ = world()

    async def follow(side):
        if side is sc_side:
            await asyncio.sleep(0.24)
        side.fresh = True
        return True

    followers = Followers([st_side, sc_side], SETTINGS, store, lambda coro: coro.close())  # type: ignore[arg-type]
    followers._follow_or_mark = follow  # type: ignore[method-assign]
    fresh = 0
    for _ in range(12):
        fresh += (await followers.follow_all())[1]
        await asyncio.sleep(0.01)  # the round's decisions
    assert fresh >= 4, fresh


async def test_a_public_secret_whose_st_lock_the_index_lacks_makes_the_st_chain_read_again():
    """Chaos seed 7 (bot_late_claim): a worker restarted while the ST node dropped logs read past the seller's ST
    lock. We act for the buyer: the seller's claim of our SC lock made the secret public, but with no ST lock in
    the index the ST claim cannot go out. The escrow's slot shows the seller's ST swap: alerted, and the ST chain
    is read again from the trade's first block (from the standby), so the ST claim follows before T_st."""
    store, st_side, sc_side, _, driver, _ = world(keys_st=(BUYER,), keys_sc=(BUYER,))
    asked: list[tuple[str, int]] = []
    driver.reread = lambda chain, from_block: asked.append((chain, from_block))
    rec = new_trade(store)
    ins, secret = rec.signed.instruction, os.urandom(32)
    h = hashlib.sha256(secret).digest()
    store.fields[rec.trade_id].update({"st_from_block": "40", "st_timelock": str(NOW + 60)})
    st_side.follower.height = 99  # not replaying: it has read up to the head and shows no ST lock
    st_side.ledger.slots[HtlcLedger.swap_id_of(ins.sellerStAccount, ins.trade_id_bytes)] = b"\x01" * 32
    sc_lock = sc_side.ledger.lock(lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount, h,
                                             NOW + 60 - POLICY.delta()))
    sc_side.index.apply([sc_lock, ClaimedEvent(sc_lock.swap_id, secret, 95, "0x" + os.urandom(32).hex())])
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert not out.due and store.fields[rec.trade_id]["state"] == "SC_CLAIMED"
    assert "lock_without_event" in store.events(rec.trade_id) and asked == [("st", 40)]
    st_side.follower.height = 20  # a follower still replaying is not asked to explain a lock it has not reached
    await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert asked == [("st", 40)]
    from adapters.errors import RpcUnavailable

    async def st_down(sid: bytes) -> bytes:
        raise RpcUnavailable("st: no RPC endpoint answered")

    st_side.follower.height, real_slot = 99, st_side.ledger.swap_slot
    st_side.ledger.swap_slot = st_down  # the ST chain went away: this trade's decision still completes
    assert not (await driver.advance(store.get(rec.trade_id), rnd(), fence="f")).due
    st_side.ledger.swap_slot = real_slot
    st_side.index.apply([st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount,
                                                        h, NOW + 60))])  # read again: the lock is there
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert [d.action for d in out.due] == [Action.CLAIM_ST] and asked == [("st", 40)]


async def _revealed_but_not_followed(depth_block: int = 100, depth_time_after_t_sc: bool = False,
                                     claim_mined: bool = True, seen_unconfirmed: bool = False):
    """A relayer holding both keys revealed (its SC claim went out) and the coin ledger's follower never shows the
    Claimed event (a slow path, defect 14). The fake coin ledger's block k deep is `depth_block`; the claim, once
    mined, emptied the swap's slot there. Returns the decisions of the rounds that follow, the store and the id."""
    store, st_side, sc_side, _, driver, executor = world()
    rec = new_trade(store)
    await driver.advance(rec, rnd(), fence="f")  # intent: secret, hashlock, T_st
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    st_side.index.apply([st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount,
                                                        h, t_st))])
    t_sc = t_st - POLICY.delta()
    sc_lock = sc_side.ledger.lock(lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount, h, t_sc,
                                             block=90))
    sc_side.index.apply([sc_lock])
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert [d.action for d in out.due] == [Action.CLAIM_SC]  # the reveal, and nothing for the ST yet
    executor.dispatch(out.due)
    await _settle(executor)
    assert [tx for s in sc_side.ledger.all_senders.values() for tx in s.sent]  # the claim went out
    if claim_mined:
        sc_side.ledger.slots[sc_lock.swap_id] = bytes(32)
    if seen_unconfirmed:  # the follower's scan above its confirmed range saw our claim's secret: not k deep yet
        sc_side.index.learn_preimages([executor.box.open(store.fields[rec.trade_id]["secret"], rec.trade_id)])
    sc_side.ledger.depth = (depth_block, t_sc if depth_time_after_t_sc else NOW)
    rounds = []
    for _ in range(3):
        out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
        rounds.append([d.action for d in out.due])
        await driver.reveals.settle()
    return rounds, store, rec.trade_id


async def test_our_reveal_counts_from_the_coin_ledger_read_directly_when_the_follower_does_not_show_it():
    """Defect 14 (chaos, issue 18): the seller's own SC claim was mined but its follower, on a slow path, never
    showed the Claimed event before T_st, and the ST claim waited for the follower: the ST was refunded while the
    SC was claimed. The relayer reads the escrow slot k blocks deep itself: empty there before T_sc means our claim
    is final, so the ST claim goes out and the trade is recorded SC_CLAIMED."""
    for seen_unconfirmed in (False, True):  # also when the follower saw our claim above its confirmed range
        rounds, store, tid = await _revealed_but_not_followed(seen_unconfirmed=seen_unconfirmed)
        assert Action.CLAIM_ST in rounds[-1], seen_unconfirmed
        assert store.fields[tid]["state"] == "SC_CLAIMED"
        assert "reveal_confirmed_directly" in store.events(tid)


async def test_a_counterpartys_own_lock_emptied_by_its_own_claim_never_counts_as_our_reveal():
    """Only the SC lock our reveal consumes is read for the proof: a buyer's lock under another hashlock (picked as
    the latest when no lock has acceptable terms), claimed by the buyer with its own preimage, leaves its slot
    empty before its timelock; that must not make the relayer claim the ST with our secret."""
    store, st_side, sc_side, _, driver, executor = world(keys_st=(SELLER,), keys_sc=(SELLER,))
    rec = new_trade(store)
    await driver.advance(rec, rnd(), fence="f")
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    st_side.index.apply([st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount,
                                                        h, t_st))])
    theirs = os.urandom(32)
    bad = sc_side.ledger.lock(lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, 1,
                                         hashlib.sha256(theirs).digest(), NOW + 5, block=90))
    sc_side.index.apply([bad])
    sc_side.ledger.slots[bad.swap_id] = bytes(32)  # the buyer claimed it with its own preimage
    sc_side.ledger.depth = (100, NOW)
    for _ in range(3):
        out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
        await driver.reveals.settle()
        assert Action.CLAIM_ST not in [d.action for d in out.due]
    assert store.fields[rec.trade_id]["state"] != "SC_CLAIMED"
    assert not [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]


async def test_an_empty_slot_proves_nothing_when_the_claim_is_not_mined_the_block_may_refund_or_precedes_the_lock():
    """The direct read counts only an SC claim: the slot still holding the terms (claim not mined), a block k deep
    stamped at or after T_sc (the slot may be empty from a refund) or older than the lock (a node behind) leave
    the ST claim waiting for the follower, as before."""
    for case in ({"claim_mined": False}, {"depth_time_after_t_sc": True}, {"depth_block": 80}):
        rounds, store, tid = await _revealed_but_not_followed(**case)
        assert all(Action.CLAIM_ST not in r for r in rounds), case
        assert store.fields[tid]["state"] == "SC_LOCKED", case


async def test_a_worker_whose_coin_ledger_follower_has_not_even_shown_the_sc_lock_finds_our_reveal_by_its_claim():
    """Chaos (issue 18): a worker restarted behind a slow path to the coin ledger; its follower, reading every event
    since its cursor in one large answer, showed neither the buyer's SC lock nor our earlier claim of it before T_st.
    The relayer asks for Claimed events of the buyer's swap id alone: one whose preimage is our secret, k deep, is
    our reveal, so the ST claim goes out. A claim with another preimage proves nothing, and while the follower keeps
    up nothing is asked."""
    for case in ("ours", "another preimage", "follower keeps up"):
        store, st_side, sc_side, _, driver, executor = world()
        rec = new_trade(store)
        await driver.advance(rec, rnd(), fence="f")
        rec = store.get(rec.trade_id)
        ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
        st_side.index.apply([st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN,
                                                            ins.stAmount, h, t_st))])
        secret = executor.box.open(rec.fields["secret"], rec.trade_id)
        sid = HtlcLedger.swap_id_of(BUYER, ins.trade_id_bytes)
        sc_side.ledger.claims[sid] = secret if case != "another preimage" else os.urandom(32)
        if case == "follower keeps up":
            sc_side.follower.height = sc_side.head - 1  # fresh, its confirmed height one block under the head
        else:
            sc_side.fresh = False  # a follow that outlasted its rounds
        actions = []
        for _ in range(3):
            out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
            actions.append([d.action for d in out.due])
            await driver.reveals.settle()
        if case == "ours":
            assert Action.CLAIM_ST in actions[-1] and store.fields[rec.trade_id]["state"] == "SC_CLAIMED", actions
            assert "reveal_confirmed_directly" in store.events(rec.trade_id)
        else:
            assert all(Action.CLAIM_ST not in a for a in actions), (case, actions)
            assert store.fields[rec.trade_id]["state"] == "ST_LOCKED", case


async def test_a_buyer_side_worker_whose_coin_ledger_follower_lags_finds_the_sellers_reveal_by_its_claim():
    """Chaos (issue 18, seed 7, bot_late_claim): a worker restarted just before a counterparty seller revealed late;
    its coin-ledger follower, catching up in one large answer, showed the claim only after T_st. The buyer side asks
    for the Claimed events of its own SC swap alone and claims the ST with the secret at once (any depth, as a
    secret seen above the confirmed range)."""
    store, st_side, sc_side, _, driver, _ = world(keys_st=(BUYER,), keys_sc=(BUYER,))
    rec = new_trade(store)
    ins = rec.signed.instruction
    secret = os.urandom(32)
    st_side.index.apply([st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount,
                                                        hashlib.sha256(secret).digest(), NOW + 200))])
    sc_side.ledger.claims[HtlcLedger.swap_id_of(BUYER, ins.trade_id_bytes)] = secret
    sc_side.fresh = False  # its follow outlasts the rounds
    actions = []
    for _ in range(3):
        out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
        actions.append([d.action for d in out.due])
        await driver.reveals.settle()
    assert Action.CLAIM_ST in actions[-1], actions
    assert "secret_learned" in store.events(rec.trade_id)


def _sc_locked_with_our_secret(store, sc_side, executor):
    """A trade whose SC the buyer locked on the fake coin ledger, the seller's secret sealed in its record."""
    rec = new_trade(store)
    ins = rec.signed.instruction
    secret = os.urandom(32)
    ev = sc_side.ledger.lock(lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount,
                                        hashlib.sha256(secret).digest(), NOW + 200))
    rec.fields["secret"] = executor.box.seal(secret, rec.trade_id)
    return rec, ev


async def test_the_reveal_is_sent_urgent_and_other_claims_are_not():
    store, st_side, sc_side, _, _, executor = world()
    rec, ev = _sc_locked_with_our_secret(store, sc_side, executor)
    executor.dispatch([Due(rec, Action.CLAIM_SC, None, None, ev, time.monotonic())])
    dues = _claims(store, st_side, 1, executor.box)
    executor.dispatch(dues)
    await _settle(executor)
    (sc_tx,) = [tx for s in sc_side.ledger.all_senders.values() for tx in s.sent]
    (st_tx,) = [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]
    assert sc_tx[3] is True and st_tx[3] is False


async def test_no_reveal_while_the_st_token_would_refuse_the_buyers_claim_and_one_once_it_would():
    """The reveal gate (issue 16) against fakes: the ST chain's rules refuse escrow -> buyer, so the SC claim is
    not sent (audited once); once they allow it, it is."""
    store, st_side, sc_side, _, _, executor = world()
    rec, ev = _sc_locked_with_our_secret(store, sc_side, executor)
    ins = rec.signed.instruction
    st_side.ledger.rules.refuse[(ins.stToken, st_side.ledger.escrow, ins.buyerStAccount)] = "wallet_frozen:buyer"
    for _ in range(2):  # asked twice, audited once
        executor.not_before.clear()
        executor.dispatch([Due(rec, Action.CLAIM_SC, None, None, ev, time.monotonic())])
        await _settle(executor)
    assert not [tx for s in sc_side.ledger.all_senders.values() for tx in s.sent]
    assert [t.receiver for t in st_side.ledger.rules.asked] == [ins.buyerStAccount] * 2
    assert [e["event"] for e in store.audits[rec.trade_id]].count("reveal_withheld") == 1
    st_side.ledger.rules.refuse.clear()
    executor.not_before.clear()
    executor.dispatch([Due(rec, Action.CLAIM_SC, None, None, ev, time.monotonic())])
    await _settle(executor)
    assert len([tx for s in sc_side.ledger.all_senders.values() for tx in s.sent]) == 1
    assert "reveal_unblocked" in [e["event"] for e in store.audits[rec.trade_id]]


async def _settle(executor: Executor) -> None:
    import asyncio

    await asyncio.gather(*executor.tasks())


async def test_a_lock_the_follower_delivers_while_its_trade_is_being_finished_is_still_refunded():
    """Chaos (STUCK): the driver finished a trade as ABORTED on a view without its ST lock (mined just before
    T_st, shown k blocks later); the follower delivered the lock meanwhile, and finishing the trade dropped it
    from the index with everything else, so no sweep ever saw it. A live lock outlives its trade's finish."""
    from relayer.janitor import Janitor
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, _, _ = world()
    rec = new_trade(store)
    ins = rec.signed.instruction
    ev = st_side.ledger.lock(lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, os.urandom(32),
                                        NOW - 1))  # its timelock has passed: a refund is due
    st_side.index.apply([ev])
    done = await store.update(rec, {"state": TradeState.ABORTED.value}, actor="t", event="state")
    archive_later = lambda coro: coro.close()  # noqa: E731 - the archival it schedules is not under test
    janitor = Janitor([st_side, sc_side], SETTINGS, store, StrayBook(store), archive_later)  # type: ignore[arg-type]
    janitor.finished(done)
    due = await janitor.sweep(time.monotonic())
    assert [(d.action, d.st_ev.swap_id) for d in due] == [(Action.REFUND_ST, ev.swap_id)]
    st_side.index.apply([RefundedEvent(ev.swap_id, 95, "0x" + "ab" * 32)])  # refunded: now it may go
    await janitor.prune_index()
    assert ins.trade_id_bytes not in st_side.index.live_trade_ids() and not st_side.index.locks.get(ins.trade_id_bytes)


async def test_what_a_reorg_deeper_than_k_took_out_of_finished_trades_is_made_again_refunds_and_claims():
    """Chaos seed 42 (five STUCK trades): one refund batch on st2 was 3 blocks deep (k=2) when a reorg of depth 4
    removed it. The trades were ABORTED and forgotten, so their ST locks stayed live with nobody to refund them.
    Beyond the guarantee, but re-derived: after a deep reorg the locks of trades finished lately on that chain
    are read again and each live one gets back the end it had. A refund is made again (a stray at its
    timelock). A claim is made again with the secret it had revealed, while its timelock allows: left live, the
    lock would refund at its timelock and take back from the buyer what the seller was paid for (an archived
    record keeps no secret: the claim's own preimage is kept). Too late for that, it is an error alert, and the
    lock is refunded rather than left locked for ever."""
    from structlog.testing import capture_logs

    from relayer.janitor import Janitor
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, _, executor = world()
    janitor = Janitor([st_side, sc_side], SETTINGS, store, StrayBook(store), lambda coro: coro.close())  # type: ignore[arg-type]
    locks = {}
    for name, state, timelock in (("aborted", TradeState.ABORTED, NOW - 1), ("settled", TradeState.SETTLED, NOW + 300),
                                  ("too late", TradeState.SETTLED, NOW - 1)):
        rec = new_trade(store)
        ins = rec.signed.instruction
        secret = os.urandom(32)
        ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, hashlib.sha256(secret).digest(),
                        timelock)
        end = RefundedEvent(ev.swap_id, 95, "0x" + "ab" * 32) if state is TradeState.ABORTED else \
            ClaimedEvent(ev.swap_id, secret, 95, "0x" + "cd" * 32)
        st_side.index.apply([ev, end])
        janitor.finished(await store.update(rec, {"state": state.value}, actor="t", event="state"))
        locks[name] = (ev, secret, rec.trade_id)
    assert not await janitor.sweep(time.monotonic()) and not await janitor.reclaims_due(time.monotonic())
    for ev, _, _ in locks.values():
        st_side.ledger.lock(ev)  # the reorg took their ends out: the slots hold the locks again
    with capture_logs() as logs:
        await janitor.after_deep_reorg(st_side)
        refunds = await janitor.sweep(time.monotonic())
        claims = await janitor.reclaims_due(time.monotonic())
    assert sorted((d.action, d.st_ev.swap_id) for d in refunds) == sorted(
        [(Action.REFUND_ST, locks["aborted"][0].swap_id), (Action.REFUND_ST, locks["too late"][0].swap_id)])
    assert [(d.action, d.st_ev.swap_id, d.preimage) for d in claims] == [
        (Action.CLAIM_ST, locks["settled"][0].swap_id, locks["settled"][1])]
    assert locks["settled"][0].terms() not in store.strays["st"]  # never refunded by the relayer
    alerts = {e["trade_id"]: e["log_level"] for e in logs if e["event"] == "finished_trade_lock_live_again"}
    assert alerts == {locks["aborted"][2]: "warning", locks["settled"][2]: "warning", locks["too late"][2]: "error"}
    secret = locks["settled"][1]
    assert secret.hex() not in str(logs) and repr(secret) not in str(logs)  # the secret is not logged
    executor.dispatch(claims)  # the record is archived: no sealed secret, the claim's own preimage is used
    await _settle(executor)
    sent = [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]
    assert len(sent) == 1 and secret.hex() in sent[0][1]
    st_side.ledger.slots.pop(locks["settled"][0].swap_id)  # claimed again, mined
    assert not await janitor.reclaims_due(time.monotonic()) and not janitor.restore.reclaims["st"]
    assert not janitor.restore.claimed(st_side, locks["aborted"][0])  # a refunded lock live again: refunded again


async def test_an_unreadable_record_of_a_trade_to_claim_again_does_not_fail_the_round():
    """A record that cannot be read back is left out (logged at error) and the other claims go on; it must not
    raise out of the round every round until the lock's timelock."""
    from structlog.testing import capture_logs

    from relayer.janitor import Janitor
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, _, _ = world()
    janitor = Janitor([st_side, sc_side], SETTINGS, store, StrayBook(store), lambda coro: coro.close())  # type: ignore[arg-type]
    evs = []
    for _ in range(2):
        rec = new_trade(store)
        ins = rec.signed.instruction
        secret = os.urandom(32)
        ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, hashlib.sha256(secret).digest(),
                        NOW + 300)
        st_side.index.apply([ev, ClaimedEvent(ev.swap_id, secret, 95, "0x" + "cd" * 32)])
        janitor.finished(await store.update(rec, {"state": TradeState.SETTLED.value}, actor="t", event="state"))
        st_side.ledger.lock(ev)
        evs.append((rec.trade_id, ev))
    store.corrupt.add(evs[0][0])
    await janitor.after_deep_reorg(st_side)
    with capture_logs() as logs:
        claims = await janitor.reclaims_due(time.monotonic())
    assert [d.st_ev for d in claims] == [evs[1][1]]
    assert [e["trade_id"] for e in logs if e["event"] == "reclaim_record_unreadable"] == [evs[0][0]]


async def test_a_claim_whose_lock_came_back_after_the_recheck_is_made_again_not_refunded():
    """The deep reorg took out the lock and its claim; the recheck found the slot empty. A few blocks later the
    lock is mined again (its sender re-broadcast it) and the follower delivers it live: the sweep would keep it
    as a stray of a finished trade and refund it at its timelock. It had been claimed: it is claimed again. And
    a second lock under the same swap id (a re-lock of the settled trade id) does not hide the claimed one."""
    from relayer.janitor import Janitor
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, _, _ = world()
    janitor = Janitor([st_side, sc_side], SETTINGS, store, StrayBook(store), lambda coro: coro.close())  # type: ignore[arg-type]
    rec = new_trade(store)
    ins = rec.signed.instruction
    secret = os.urandom(32)
    ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, hashlib.sha256(secret).digest(),
                    NOW + 300)
    relock = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, 1, os.urandom(32), NOW + 900, block=99)
    st_side.index.apply([ev, ClaimedEvent(ev.swap_id, secret, 95, "0x" + "cd" * 32), relock])
    janitor.finished(await store.update(rec, {"state": TradeState.SETTLED.value}, actor="t", event="state"))
    await janitor.after_deep_reorg(st_side)  # the slot holds the re-lock, then nothing: nothing to do yet
    assert not await janitor.reclaims_due(time.monotonic())
    st_side.ledger.lock(ev)  # mined again
    st_side.index.apply([ev])  # and delivered live by the follower
    await janitor.sweep(time.monotonic())
    claims = await janitor.reclaims_due(time.monotonic())
    assert [(d.action, d.st_ev, d.preimage) for d in claims] == [(Action.CLAIM_ST, ev, secret)]
    assert ev.terms() not in store.strays["st"]


async def test_a_coin_claim_a_deep_reorg_took_out_is_made_again_in_the_protocols_order():
    """The reveal gate asks the ST token whether the buyer's ST claim can follow. Once that claim stands (the
    secret is public on the ST chain), the escrow no longer holds the ST and the gate would refuse: the seller's
    payment is claimed again without it (trade A). When the deep reorg took out the ST claim too (B), read from
    the chain, whichever ledger's recheck runs first: the coin claim goes through the gate (the ST token may
    refuse the buyer by now), and the ST claim waits until the coin claim stands. When the coin claim can no
    longer be made in time (C), the ST claim is not made either: both legs go back to their senders."""
    from structlog.testing import capture_logs

    from relayer.janitor import Janitor
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, _, executor = world()
    janitor = Janitor([st_side, sc_side], SETTINGS, store, StrayBook(store), lambda coro: coro.close())  # type: ignore[arg-type]
    trades = {}
    for name, t_sc in (("A", NOW + 300), ("B", NOW + 300), ("C", NOW - 1)):
        rec = new_trade(store)
        ins = rec.signed.instruction
        secret = os.urandom(32)
        h = hashlib.sha256(secret).digest()
        st_ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, h, NOW + 600)
        sc_ev = lock_event(ins.trade_id_bytes, BUYER, SELLER, SC_TOKEN, ins.scAmount, h, t_sc)
        st_side.index.apply([st_ev, ClaimedEvent(st_ev.swap_id, secret, 95, "0x" + "cd" * 32)])
        sc_side.index.apply([sc_ev, ClaimedEvent(sc_ev.swap_id, secret, 95, "0x" + "ef" * 32)])
        janitor.finished(await store.update(rec, {"state": TradeState.SETTLED.value}, actor="t", event="state"))
        trades[name] = (rec.trade_id, st_ev, sc_ev, secret)
        sc_side.ledger.lock(sc_ev)  # a deep reorg on the coin ledger took out every SC claim
        if name != "A":
            st_side.ledger.lock(st_ev)  # and one on the ST chain took out B's and C's ST claims
    refuse = (ST_TOKEN, ST_ESCROW, BUYER)
    st_side.ledger.rules.refuse[refuse] = "frozen:" + BUYER
    with capture_logs() as logs:
        await janitor.after_deep_reorg(sc_side)  # the coin ledger's recheck first; the ST chain's not yet
        claims = await janitor.reclaims_due(time.monotonic())
        assert sorted((d.rec.trade_id, d.action, d.revealed) for d in claims) == sorted(
            [(trades["A"][0], Action.CLAIM_SC, True), (trades["B"][0], Action.CLAIM_SC, False)])
        executor.dispatch(claims)
        await _settle(executor)
        sc_sent = [tx[1] for s in sc_side.ledger.all_senders.values() for tx in s.sent]
        assert len(sc_sent) == 1 and trades["A"][3].hex() in sc_sent[0] and trades["B"][3].hex() not in sc_sent[0]
        assert "reveal_withheld" in store.events(trades["B"][0])
        sc_side.ledger.slots.pop(trades["A"][2].swap_id)  # A's coin claim mined
        await janitor.after_deep_reorg(st_side)
        executor.not_before.clear()
        claims = await janitor.reclaims_due(time.monotonic())
        assert [(d.rec.trade_id, d.action) for d in claims] == [(trades["B"][0], Action.CLAIM_SC)]  # B's ST waits
        del st_side.ledger.rules.refuse[refuse]  # the issuer unfroze the buyer
        executor.dispatch(claims)
        await _settle(executor)
        sc_side.ledger.slots.pop(trades["B"][2].swap_id)  # B's coin claim mined: now its ST claim
        claims = await janitor.reclaims_due(time.monotonic())
    assert [(d.rec.trade_id, d.action) for d in claims] == [(trades["B"][0], Action.CLAIM_ST)]
    assert not [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]  # no ST claim went out before
    given_up = {(e["trade_id"], e["chain"]) for e in logs if e["event"] in ("reclaim_given_up",
                                                                           "finished_trade_lock_live_again")
                and e["log_level"] == "error"}
    assert given_up == {(trades["C"][0], "sc"), (trades["C"][0], "st")}, logs
    assert trades["C"][1].terms() in store.strays["st"] and trades["C"][2].terms() in store.strays["sc"]


async def test_a_restarted_worker_claims_the_st_from_the_record_and_a_slot_read_while_its_follower_replays():
    """Chaos seed 42, 50 rounds (7 ONE-SIDED in one window): the SC claim was mined, the ST claim sent, and the
    worker was killed; the ST chain restarted with an empty mempool. The new worker's follower was still
    replaying the ST chain from the trade's first block when T_st came, so no ST lock was in its index and
    nothing claimed it; it even re-planned the ST lock of a trade past it. The lock's terms are all in the
    record (the trade's amounts and parties, T_st as observed, the hashlock of the known secret): one slot
    read says whether the escrow holds exactly that lock, and the claim goes out without waiting for the
    replay. A slot with other terms (or none) is left to the follower."""
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, driver, executor = world()
    rec = new_trade(store)
    await driver.advance(rec, rnd(), fence="f")  # intent: the secret, its hashlock, T_st
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, h, t_st)
    rec = await store.update(rec, {"state": TradeState.SC_CLAIMED.value, "st_timelock": t_st}, actor="t", event="state")
    st_side.follower.height = 10  # replaying: far below the head, the lock's block not read yet
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    assert not [d for d in out.due if d.action is Action.CLAIM_ST]  # the escrow holds no such lock (yet)
    st_side.ledger.lock(ev)
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")
    claims = [d for d in out.due if d.action is Action.CLAIM_ST]
    assert [(d.st_ev.swap_id, d.st_ev.terms_hash) for d in claims] == [(ev.swap_id, ev.terms_hash)]
    assert "lock_replanned" not in store.events(rec.trade_id)  # a trade past its ST lock is never re-planned
    executor.dispatch(claims)
    await _settle(executor)
    sent = [tx for s in st_side.ledger.all_senders.values() for tx in s.sent]
    assert len(sent) == 1 and box.open(rec.fields["secret"], rec.trade_id).hex() in sent[0][1]


async def test_a_claim_from_the_record_waits_for_nothing_it_cannot_have_and_tries_the_planned_timelock_too():
    """A review of the claim from the record: it was sent after T_st (mined, reverted, retried every cooldown); a
    secret sealed with a key this worker lacks raised inside the decision and set the trade aside, although the
    follower may show the preimage any moment; and a record whose observed T_st predates a re-plan never matched
    the lock made on the planned one."""
    from relayer.protocol.states import TradeState

    store, st_side, sc_side, box, driver, executor = world()
    rec = new_trade(store)
    await driver.advance(rec, rnd(), fence="f")
    rec = store.get(rec.trade_id)
    ins, h, t_st = rec.signed.instruction, bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
    ev = lock_event(ins.trade_id_bytes, SELLER, BUYER, ST_TOKEN, ins.stAmount, h, t_st)
    st_side.ledger.lock(ev)
    st_side.follower.height = 10  # replaying: the lock's block not read yet
    rec = await store.update(rec, {"state": TradeState.SC_CLAIMED.value, "st_timelock": t_st - 40}, actor="t",
                             event="state")  # observed before a re-plan; the lock stands on the planned t_st
    claims = [d for d in (await driver.advance(store.get(rec.trade_id), rnd(), fence="f")).due
              if d.action is Action.CLAIM_ST]
    assert [(d.st_ev.swap_id, d.st_ev.timelock) for d in claims] == [(ev.swap_id, t_st)]

    st_side.head_timestamp = t_st  # T_st has come: the escrow refuses the claim, it is never sent
    out = await driver.advance(store.get(rec.trade_id), Round({"st": t_st, "sc": t_st}, time.monotonic()), fence="f")
    assert not [d for d in out.due if d.action is Action.CLAIM_ST]
    st_side.head_timestamp = NOW

    foreign = SecretBox(generate_key()).seal(os.urandom(32), rec.trade_id)  # a key this worker does not hold
    rec = await store.update(store.get(rec.trade_id), {"secret": foreign}, actor="t", event=None)
    out = await driver.advance(store.get(rec.trade_id), rnd(), fence="f")  # no exception: the trade is not set aside
    assert not [d for d in out.due if d.action is Action.CLAIM_ST]


# ------------------------------------------------------------------ schedule


def test_the_schedule_gives_back_only_what_changed_between_reconciliations():
    from relayer.schedule import Schedule

    s = Schedule(reconcile_every=60)
    trades = [f"0x{i:064x}" for i in range(1000)]
    assert s.take(trades, now=0.0) == trades  # the first round decides everything
    assert s.take(trades, now=1.0) == []  # nothing happened: nothing to do, however many trades are open
    s.mark(trades[7])
    s.mark_at(trades[9], 5.0)
    s.mark_at(trades[9], 3.0)  # an earlier timer wins
    s.mark("0x" + "ff" * 32)  # not ours (yet): kept, not returned
    assert s.take(trades, now=2.0) == [trades[7]]
    assert s.take(trades, now=3.0) == [trades[9]]
    assert s.take(trades, now=5.5) == []  # the superseded timer does not fire again
    s.mark_at(trades[3], 4.0)
    s.forget(trades[3])
    assert s.take(trades, now=10.0) == []
    assert s.take(trades + ["0x" + "ff" * 32], now=11.0) == ["0x" + "ff" * 32]
    assert len(s.take(trades, now=61.0)) == 1000  # reconciliation: everything, as a net under the rest
    s.mark_all()
    assert len(s.take(trades, now=62.0)) == 1000


def test_a_trades_timers_cover_every_instant_its_decision_can_change_at():
    from relayer.schedule import next_instants

    store = FakeStore()
    rec = new_trade(store)
    ins = rec.signed.instruction
    rec.fields.update(t_st=str(NOW + 300), t_sc=str(NOW + 300 - POLICY.delta()))
    instants = next_instants(rec, POLICY)
    t_sc = NOW + 300 - POLICY.delta()
    for cutoff in (ins.deadline, NOW + 300, t_sc, t_sc - POLICY.reveal_window(), NOW + 300 - POLICY.min_st_window()):
        assert any(cutoff < t <= cutoff + 5 for t in instants), cutoff


async def test_batches_are_sized_by_the_block_gas_limit_and_the_measured_gas_per_entry():
    store, st_side, sc_side, _, _, executor = world()
    dues = _claims(store, st_side, 1, executor.box)
    st_side.gas_limit = 30_000_000
    assert executor.batch_size(dues[0]) == 500  # 15M gas at the 30k worst case before any batch was measured
    executor._measured("st", "claim", 50 * 9_000, 50)  # a batch of 50 took 9k gas an entry
    assert executor.batch_size(dues[0]) == 1000  # capped by DVP_BATCH_MAX
    executor.settings.batch_max = 5000
    assert executor.batch_size(dues[0]) == 15_000_000 // 9_000
    st_side.gas_limit = 1_000_000  # a permissioned chain with small blocks
    assert executor.batch_size(dues[0]) == 500_000 // 9_000


def test_a_claim_due_with_less_than_delta_left_is_counted_and_a_lock_counting_down_to_its_refund_is_not():
    """dvp_claims_due_within_delta (the alert "a timelock with less than Δ left"): only a claim that is due
    because the secret is public races its refund; a lock waiting for its refund is no alarm."""
    from relayer.logging import get_logger
    from relayer.protocol.rules import LegView, ObservedLock

    store, _, _, _, driver, _ = world()
    rec = new_trade(store)
    route = driver.routes.route(rec.signed.instruction)
    delta = route.policy.delta()

    def lock(timelock: int) -> ObservedLock:
        return ObservedLock(SELLER, BUYER, ST_TOKEN, 1, b"h" * 32, timelock)

    racing = rnd()
    driver._watch_timelocks(rec, route, LegView(lock(NOW + delta // 2)), LegView(lock(NOW + 1), claimed=True),
                            racing, get_logger())
    assert racing.claims_due_near == {"st": 1, "sc": 0}
    early = rnd()
    driver._watch_timelocks(rec, route, LegView(lock(NOW + 2 * delta)), LegView(lock(NOW + 1), claimed=True),
                            early, get_logger())
    assert early.claims_due_near == {"st": 0, "sc": 0}
    refunding = rnd()
    driver._watch_timelocks(rec, route, LegView(lock(NOW + delta // 2)), LegView(lock(NOW + delta // 4)),
                            refunding, get_logger())
    assert refunding.claims_due_near == {"st": 0, "sc": 0} and refunding.min_left["st"] == delta // 2


async def test_submissions_sent_together_run_as_one_batch_and_each_gets_its_own_answer():
    import asyncio

    from relayer.together import Together

    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[object]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    together = Together(run, most=500)
    results = await asyncio.gather(*(together.submit(i) for i in range(6)), return_exceptions=True)
    assert calls == [[0, 1, 2, 3, 4, 5]]  # one batch for all six
    assert [r if not isinstance(r, Exception) else str(r) for r in results] == [0, "odd 1", 20, "odd 3", 40, "odd 5"]

    async def down(items: list[int]) -> list[object]:
        raise ConnectionError("redis down")

    failing = Together(down, most=500)
    both = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
    assert all(isinstance(e, ConnectionError) for e in both) and both[0] is not both[1]  # each its own object


async def test_an_alert_redis_refuses_to_queue_is_raised_again_by_the_next_round():
    """The back office's claim_racing_refund alert is reported once per trade: if the outbox write fails, it must
    not count as reported (before, the driver had marked it at decide time and it was never sent)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from relayer.logging import get_logger
    from relayer.protocol.rules import LegView, ObservedLock
    from relayer.webhooks import queue_alerts

    store, _, _, _, driver, _ = world()
    rec = new_trade(store)
    route = driver.routes.route(rec.signed.instruction)
    delta = route.policy.delta()
    lock = ObservedLock(SELLER, BUYER, ST_TOKEN, 1, b"h" * 32, NOW + delta // 2)
    claimed = LegView(ObservedLock(SELLER, BUYER, ST_TOKEN, 1, b"h" * 32, NOW + 1), claimed=True)

    class Outbox:
        def __init__(self) -> None:
            self.entries: list[dict] = []
            self.refuse = True

        async def xadd(self, _key: str, entry: dict) -> str:
            if self.refuse:
                raise RedisConnectionError("Redis is restarting")
            self.entries.append(entry)
            return "1-0"

    outbox = Outbox()
    store.r = outbox
    first = rnd()
    driver._watch_timelocks(rec, route, LegView(lock), claimed, first, get_logger())
    assert [a[1] for a in first.alerts] == ["claim_racing_refund"]
    await queue_alerts(store, first.alerts, driver.unreport, get_logger())
    assert outbox.entries == []
    outbox.refuse = False
    second = rnd()
    driver._watch_timelocks(rec, route, LegView(lock), claimed, second, get_logger())
    assert [a[1] for a in second.alerts] == ["claim_racing_refund"]  # raised again: it was never queued
    await queue_alerts(store, second.alerts, driver.unreport, get_logger())
    assert [e["alert"] for e in outbox.entries] == ["claim_racing_refund"]
    third = rnd()
    driver._watch_timelocks(rec, route, LegView(lock), claimed, third, get_logger())
    assert third.alerts == []  # queued once: reported
