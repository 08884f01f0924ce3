"""One trade at a time: a view of both legs from the chain index → `decide()` → the state persisted (fenced,
audited) and the actions due. Intent before side effects: the secret (sealed), its hashlock and T_st are in
Redis before the ST lock can be sent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from adapters.errors import LedgerError
from adapters.htlc import LockedEvent
from relayer import metrics
from relayer.actions import Due, DueKey, dvp_terms
from relayer.authorizations import kept_dvp_signature, stored_authorization
from relayer.errors import LeaseLapsed
from relayer.follow import ChainSide, LockInstance
from relayer.strays import StrayBook
from relayer.leases import ACTOR
from relayer.logging import get_logger
from relayer.protocol.instruction import TradeInstruction
from relayer.protocol.rules import (
    Action,
    AtomicView,
    Decision,
    LegView,
    Roles,
    TimingPolicy,
    TradeView,
    check_sc_lock,
    check_st_lock,
    choose_lock,
    decide,
    decide_atomic,
)
from relayer.protocol.states import TERMINAL, TradeState, can_transition
from relayer.reveal_proofs import REVEALS_KEPT, RevealProofs
from relayer.routing import Route, Routes
from relayer.secrets import SecretBox, SecretDecryptError
from relayer.store import Store, TradeRecord, refuses_writes

NO_EVENT_CHECK_TIMEOUT = 1.5  # seconds the lock-without-event slot read may take within a decision


@dataclass
class Round:
    """What one round observed of the chains (and the least time left on a live lock, for the metrics)."""

    clocks: dict[str, int]  # ledger name -> its clock this round (ChainSide.now)
    observed_at: float  # monotonic time the round finished reading the chains
    min_left: dict[str, float] = field(default_factory=lambda: {"st": float("inf"), "sc": float("inf")})
    claims_due_near: dict[str, int] = field(default_factory=lambda: {"st": 0, "sc": 0})  # see _watch_timelocks
    # (trade id, alert, data, what `Driver._first` marked reported): once each, and again if it could not be queued
    alerts: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)

    def now(self, side: ChainSide) -> int:
        return self.clocks[side.name]

    def offset(self, route: Route) -> int:
        """ST clock minus coin-ledger clock of one route."""
        return self.clocks[route.st.name] - self.clocks[route.sc.name]


def roles_of(ins: TradeInstruction, route: Route, holders: frozenset[str]) -> Roles:
    """What this firm may sign for in a trade: the keys its workers hold, or the holder-signed accounts whose locks
    it submits. Which worker signs is the account lease's business (an action needing an account leased elsewhere
    is routed to that worker's outbox)."""
    return Roles(
        seller=ins.sellerStAccount in route.st.ledger.all_senders or ins.sellerStAccount in holders,
        buyer=ins.buyerScAccount in route.sc.ledger.all_senders or ins.buyerScAccount in holders,
        st_gas=bool(route.st.ledger.all_senders),
        sc_gas=bool(route.sc.ledger.all_senders),
    )


@dataclass
class Advanced:
    """The outcome of deciding one trade."""

    due: list[Due]
    finished: bool = False  # it reached a terminal state in this call
    # why a write of this decision did not go through ("" when all did): "refused" (Redis refuses every write) or
    # "lapsed" (the trade's lease lapsed, nobody holds it); engine._decide_one says what of it may go out
    unrecorded: str = ""


async def _unless_refused(write: Awaitable[Any]) -> tuple[str, Any]:
    """Await a write that only records (the trade's first blocks, a stray kept, the decided state): ("", its
    result); or, so that the decision goes on without it, ("refused", None) when Redis refuses every write
    (store.refuses_writes) and ("lapsed", None) when the trade's lease lapsed with nobody holding it (its
    renewals were refused). The engine says what of such a decision may still go out (Advanced.unrecorded)."""
    try:
        return "", await write
    except LeaseLapsed:
        return "lapsed", None
    except RedisError as exc:
        if not refuses_writes(exc):
            raise
        return "refused", None


class Driver:
    """Decides and records one trade; the executor sends what it finds due."""

    def __init__(self, routes: Routes, store: Store, box: SecretBox, strays: StrayBook,
                 in_flight: Callable[[DueKey], bool], holders: frozenset[str] = frozenset()) -> None:
        self.routes = routes
        self.holders = holders  # accounts whose locks come from their holders' authorisations (DVP_HOLDER_SIGNED)
        self.store = store
        self.box = box
        self.strays = strays
        self.in_flight = in_flight  # the executor's: is this action's transaction still out?
        self.log = get_logger()
        self._reported: dict[str, set[str]] = {}  # trade id -> what was already logged or audited once for it
        # read a ledger again from a block (a node gave no event for a lock its escrow holds): the followers'
        self.reread: Callable[[str, int], None] = lambda chain, from_block: None
        self.slot_checks: dict[str, float] = {}  # ledger -> monotonic time until which its no-event check is skipped
        self.reveals = RevealProofs()  # our SC claims read k deep from the coin ledger itself (follower lagging)
        self._revealing: dict[str, None] = {}  # trades whose SC claim (the reveal) this driver found due (ordered)

    def _first(self, trade_id: str, what: str) -> bool:
        """True the first time `what` is reported for this trade (each alert is logged and audited once)."""
        seen = self._reported.setdefault(trade_id, set())
        if what in seen:
            return False
        seen.add(what)
        return True

    def unreport(self, trade_id: str, what: str) -> None:
        """`what` counts as not reported after all (its alert could not be queued): the next round raises it again."""
        self._reported.get(trade_id, set()).discard(what)

    def forget(self, trade_id: str) -> None:
        self._reported.pop(trade_id, None)
        self.reveals.forget(trade_id)
        self._revealing.pop(trade_id, None)

    def roles_for(self, rec: TradeRecord, route: Route) -> Roles:
        return roles_of(rec.signed.instruction, route, self.holders)

    @staticmethod
    def is_atomic(rec: TradeRecord, route: Route) -> bool:
        return route.is_atomic(rec.signed.instruction)

    async def advance(self, rec: TradeRecord, rnd: Round, fence: str | None = None) -> Advanced:
        """Decide one trade. With `fence` (our trade lease) this worker drives it: it writes state, creates the
        secret and reports. Without, it only helps: the trade was routed here because a due action needs an
        account this worker signs for; it acts, and leaves every record write to the driver."""
        route = self.routes.route(rec.signed.instruction)  # UnknownChain: a trade on a ledger no longer followed
        if self.is_atomic(rec, route):
            return await self._advance_atomic(rec, route, rnd, fence)
        st, sc, policy = route.st, route.sc, route.policy
        ins = rec.signed.instruction
        log = self.log.bind(trade_id=ins.tradeId)
        roles = self.roles_for(rec, route)
        st_leg, st_ev, sc_leg, sc_ev, strays = self._legs(rec, route)
        now_st, now_sc = rnd.now(st), rnd.now(sc)
        unwritten = ""  # why a write of this decision did not go through, if one did not (Advanced.unrecorded)
        if fence is not None:
            unwritten = (await _unless_refused(self._note_from_blocks(rec, route, fence)))[0]
            if roles.seller and st_leg.lock is None and not st_leg.refunded and st.fresh:
                holder_signed = ins.sellerStAccount in self.holders  # T_st is the one its holder signs
                if rec.get("hashlock") is None:
                    await self._prepare_secret(rec, policy, now_st, log, fence, plan=not holder_signed)
                elif not holder_signed:
                    await self._replan_lock(rec, policy, now_st, log, fence)
        hashlock = bytes.fromhex(rec.fields["hashlock"]) if rec.get("hashlock") else None
        sc_auth = stored_authorization(rec, "sc") if ins.buyerScAccount in self.holders else None
        reveal_lock = self._our_reveal_lock(rec, route, roles, st_leg, sc_leg, sc_ev, hashlock)
        proven_at = self.reveals.proven(rec.trade_id, reveal_lock) if reveal_lock is not None else None
        seen_preimage = self._seen_preimage(st_leg)
        claim = self._claim_event(rec, route, roles, st_leg, sc_leg, hashlock, seen_preimage)
        if claim is not None:
            if roles.seller:
                proven_at = proven_at if proven_at is not None else claim[0]
            else:
                seen_preimage = claim[1]  # a buyer-side relayer claims the ST with a secret read at any depth
        view = TradeView(
            instruction=ins, st=st_leg, sc=sc_leg, now_st=now_st, now_sc=now_sc,
            clock_offset=rnd.offset(route), head_st=st.head_timestamp, head_sc=sc.head_timestamp,
            our_hashlock=hashlock, planned_t_st=rec.get_int("t_st"),
            sc_confirmed_time=sc.follower.confirmed_timestamp if sc.follower else 0,
            st_fresh=st.fresh, sc_fresh=sc.fresh,
            revealed=rec.state is TradeState.SC_CLAIMED or proven_at is not None,
            seen_preimage=seen_preimage,
            sc_lock_authorized=ins.buyerScAccount not in self.holders or sc_auth is not None,
            planned_t_sc=sc_auth.timelock if sc_auth is not None else None,
        )
        d = decide(view, roles, policy)
        if proven_at is not None and d.state in (TradeState.ST_LOCKED, TradeState.SC_LOCKED):
            d.state = TradeState.SC_CLAIMED  # our reveal is k deep: the secret is public, the ST claim is out
        elif reveal_lock is not None:
            self._prove_reveal(rec, route, view, d, reveal_lock)
        if rec.state is TradeState.SC_CLAIMED and st_leg.lock is None and (roles.buyer or roles.st_gas) and \
                Action.CLAIM_ST not in d.actions:
            recorded = await self._recorded_st_lock(rec, route, view)
            if recorded is not None:  # the follower has not shown it yet (a restart's replay): claimed from the record
                st_ev = recorded
                d.actions.append(Action.CLAIM_ST)
        finished = False
        if fence is not None and d.state is TradeState.ABORTED and await self._lock_without_event(rec, route, log):
            d.state = rec.state  # the chain holds a lock the node gave no event for: never abort on missing logs
        elif fence is not None and d.state is TradeState.SC_CLAIMED and st_leg.lock is None and \
                (roles.buyer or roles.st_gas) and (sc_leg.preimage or seen_preimage) and _caught_up(route.st):
            # the secret is out and the ST follower has read up to the head: where is the ST lock?
            await self._lock_without_event(rec, route, log, legs=("st",))
        if fence is not None:
            unwritten = (await _unless_refused(self._keep_strays(strays, log)))[0] or unwritten
            await self._report_anomalies(rec, d, [i.lock for _, i in strays], log)
            if proven_at is not None and self._first(rec.trade_id, "reveal-proven"):
                metrics.REVEALS_PROVEN_DIRECTLY.labels(route.sc.name).inc()
                log.warning("reveal_confirmed_directly", chain=route.sc.name, block=proven_at)
                await self.store.note(rec.trade_id, ACTOR, "reveal_confirmed_directly", chain=route.sc.name,
                                           block=proven_at)
            follower = route.sc.follower
            if proven_at is not None and reveal_lock is not None and follower is not None \
                    and follower.height >= proven_at and self._still_live(route.sc, reveal_lock):
                # not a lag: the follower read past the claim and gave no event for it (a node dropping logs)
                self.reread(route.sc.name, reveal_lock.block)
            self._watch_timelocks(rec, route, st_leg, sc_leg, rnd, log)
            observed: dict[str, Any] = {}
            learned = sc_leg.preimage or view.seen_preimage
            if learned and st_leg.active and rec.get("secret") is None:
                # the counterparty's secret, kept (sealed) before the claim it allows: a worker restarted while the
                # revealing chain is down or still being replayed claims from Redis instead of waiting for it
                observed["secret"] = self.box.seal(learned, ins.tradeId)
            if st_leg.lock and rec.get("st_timelock") is None:
                observed["st_timelock"] = st_leg.lock.timelock
            if sc_leg.lock and rec.get("sc_timelock") is None:
                observed["sc_timelock"] = sc_leg.lock.timelock
            not_applied, finished = await _unless_refused(self._apply(rec, d, observed, log, fence))
            unwritten = not_applied or unwritten  # the state (and a secret learned) are written when decided next
            finished = bool(finished)
        return Advanced([Due(rec, action, view, st_ev, sc_ev, rnd.observed_at) for action in d.actions], finished,
                        unrecorded=unwritten)

    def _our_reveal_lock(self, rec: TradeRecord, route: Route, roles: Roles, st_leg: LegView, sc_leg: LegView,
                         sc_ev: Any, hashlock: bytes | None) -> Any:
        """The buyer's SC lock our reveal consumes, when its end can be proven from the slot (reveal_proofs.py):
        we are the seller, both legs are live in the index with our hashlock and the SC lock has acceptable terms
        (a lock under another hashlock, emptied by its own sender's claim, must never count as our reveal), and no
        claim k deep made the secret public yet. None otherwise."""
        if not roles.seller or hashlock is None or sc_ev is None or rec.state is TradeState.SC_CLAIMED:
            return None
        if not sc_leg.active or not st_leg.active or st_leg.lock is None or sc_leg.preimage or st_leg.preimage:
            return None
        if st_leg.lock.hashlock != hashlock or sc_ev.hashlock != hashlock:
            return None
        if check_sc_lock(rec.signed.instruction, sc_ev, hashlock, st_leg.lock.timelock, route.policy.delta()):
            return None
        return sc_ev

    def _claim_event(self, rec: TradeRecord, route: Route, roles: Roles, st_leg: LegView, sc_leg: LegView,
                     hashlock: bytes | None, seen_preimage: bytes | None) -> tuple[int, bytes] | None:
        """The secret found by a Claimed event of the buyer's swap alone (reveal_proofs.py) while the coin ledger's
        follower lags so far that it shows neither the lock nor its claim: (block read up to, preimage), or None
        (asked in the background while the follower lags). The seller counts only its own reveal, k deep; a
        buyer-side relayer (or a watcher paying ST gas) any claim with the ST lock's secret."""
        if not st_leg.active or st_leg.lock is None or st_leg.preimage or sc_leg.preimage or \
                rec.state is TradeState.SC_CLAIMED:
            return None
        if roles.seller:
            if hashlock is None or st_leg.lock.hashlock != hashlock:
                return None
            depth = route.sc.confirmations
        elif roles.buyer or roles.st_gas:
            if seen_preimage is not None:
                return None
            depth = 1
        else:
            return None
        wanted = st_leg.lock.hashlock
        found = self.reveals.claim_proven(rec.trade_id, wanted, depth)
        if found is not None:
            return found
        side, ins = route.sc, rec.signed.instruction
        follower = side.follower
        if side.fresh and (follower is None or _caught_up(side)):
            return None  # the follower keeps up: a lock or claim would be in the index
        self.reveals.ask_claim(rec.trade_id, side, side.ledger.swap_id_of(ins.buyerScAccount, ins.trade_id_bytes),
                               wanted, rec.get_int("sc_from_block") or side.config.start_block, depth)
        return None

    def _prove_reveal(self, rec: TradeRecord, route: Route, view: TradeView, d: Decision, lock: Any) -> None:
        """Our reveal made final without the follower: once our SC claim was found due (or the reveal window is
        over, so it may have gone out before a restart), ask the coin ledger itself whether `lock` is claimed k
        deep while the follower shows it live (answered in reveals.proven)."""
        tid = rec.trade_id
        if Action.CLAIM_SC in d.actions:
            self._revealing[tid] = None
            while len(self._revealing) > REVEALS_KEPT:
                del self._revealing[next(iter(self._revealing))]
        head_sc = view.head_sc if view.head_sc is not None else view.now_sc
        if head_sc >= lock.timelock:
            return  # past T_sc: no block before it is left to show a claim the slot read has not shown
        window_over = lock.timelock - view.now_sc < route.policy.reveal_window()
        if tid in self._revealing or window_over:
            self.reveals.ask(tid, route.sc, lock)

    @staticmethod
    def _still_live(side: ChainSide, lock: Any) -> bool:
        """Whether the index still shows `lock` live (a follow finishing meanwhile may have shown its claim)."""
        return any(i.lock == lock and i.view().active for i in side.index.instances(lock.trade_id))

    def _legs(self, rec: TradeRecord, route: Route) -> tuple[LegView, Any, LegView, Any,
                                                             list[tuple[ChainSide, LockInstance]]]:
        """The lock each leg follows (the expected sender's first with acceptable terms, see choose_lock) and every
        other lock under the trade id: re-locks, locks by anyone else, locks on a ledger the trade is not on.
        Those are strays: never acted on but to refund them at their timelock."""
        ins = rec.signed.instruction
        tid = ins.trade_id_bytes
        st_side, sc_side = route.st, route.sc
        st_all, sc_all = st_side.index.instances(tid), sc_side.index.instances(tid)
        st_mine = [i for i in st_all if i.lock.sender == ins.sellerStAccount]
        pick = choose_lock([i.view() for i in st_mine], lambda lock: check_st_lock(ins, lock))
        st_inst = st_mine[pick] if pick is not None else None
        st_leg = st_inst.view() if st_inst else LegView()
        hashlock = st_leg.lock.hashlock if st_leg.lock else (
            bytes.fromhex(rec.fields["hashlock"]) if rec.get("hashlock") else None)
        t_st = st_leg.lock.timelock if st_leg.lock else rec.get_int("t_st")
        sc_mine = [i for i in sc_all if i.lock.sender == ins.buyerScAccount]
        pick = choose_lock([i.view() for i in sc_mine],
                           lambda lock: check_sc_lock(ins, lock, hashlock, t_st, route.policy.delta()))
        sc_inst = sc_mine[pick] if pick is not None else None
        strays = [(st_side, i) for i in st_all if i is not st_inst] + [(sc_side, i) for i in sc_all if i is not sc_inst]
        for other in self.routes.sides:
            if other is not st_side and other is not sc_side:
                strays += [(other, i) for i in other.index.instances(tid)]
        return (st_leg, st_inst.lock if st_inst else None, sc_inst.view() if sc_inst else LegView(),
                sc_inst.lock if sc_inst else None, strays)

    async def _keep_strays(self, strays: list[tuple[ChainSide, LockInstance]], log: Any) -> None:
        """Persist the live strays (once each): the janitor refunds them at their timelock, after a restart too."""
        for side in {id(s): s for s, _ in strays}.values():
            live = [i.lock for s, i in strays if s is side and i.live]
            if live and await self.strays.keep(side.name, live):
                log.info("stray_locks_kept", chain=side.name, locks=len(live))

    async def _advance_atomic(self, rec: TradeRecord, route: Route, rnd: Round, fence: str | None) -> Advanced:
        """A same-ledger trade: settled when a confirmed Settled event carries our terms' digest."""
        ins = rec.signed.instruction
        log = self.log.bind(trade_id=ins.tradeId)
        st = route.st
        digest = st.ledger.dvp_digest(dvp_terms(ins))
        settlements = st.index.settlements.get(ins.trade_id_bytes, [])
        view = AtomicView(ins, settled=any(e.digest == digest for e in settlements), now=rnd.now(st),
                          confirmed_time=st.follower.confirmed_timestamp if st.follower else 0)
        roles = self.roles_for(rec, route)
        # a party whose key another firm holds takes part through the signature that firm gave (authorizations.py)
        roles = Roles(seller=roles.seller or kept_dvp_signature(rec, ins.sellerStAccount) is not None,
                      buyer=roles.buyer or kept_dvp_signature(rec, ins.buyerScAccount) is not None,
                      st_gas=roles.st_gas, sc_gas=roles.sc_gas)
        d = decide_atomic(view, roles, route.policy)
        if not st.fresh:
            d.actions = []
        finished = False
        if fence is not None:
            await self._note_from_blocks(rec, route, fence)
            await self._report_anomalies(rec, d, [], log)
            finished = await self._apply(rec, d, {}, log, fence)
        return Advanced([Due(rec, action, None, None, None, rnd.observed_at) for action in d.actions], finished)

    async def _lock_without_event(self, rec: TradeRecord, route: Route, log: Any, legs: tuple[str, ...] = ("st", "sc")
                                  ) -> bool:
        """Does an escrow hold the expected swap though the index has no event of it? Asked before a trade is
        ABORTED for want of a lock event (a node that drops logs would make the relayer give up on a live lock,
        never refunded), and for the ST leg once the secret is public with no ST lock to claim (the ST would be
        refunded to the seller after the buyer paid). If so: alert, and read that chain again from the trade's
        first block (the followers switch endpoints)."""
        ins = rec.signed.instruction
        tid = ins.trade_id_bytes
        found = unknown = False
        for side, sender, role in ((route.st, ins.sellerStAccount, "st"), (route.sc, ins.buyerScAccount, "sc")):
            if role not in legs or any(i.lock.sender == sender for i in side.index.instances(tid)):
                continue  # the expected sender's lock seen: its end decides, not its absence (another's never)
            if not side.fresh or time.monotonic() < self.slot_checks.get(side.name, 0.0):
                unknown = True  # the chain cannot say now: not "no lock", asked again in a later round
                continue
            try:  # bounded: a hung node must not hold up the decisions of the trades decided with this one
                slot = await asyncio.wait_for(side.ledger.swap_slot(side.ledger.swap_id_of(sender, tid)),
                                              NO_EVENT_CHECK_TIMEOUT)
            except (LedgerError, TimeoutError):
                self.slot_checks[side.name] = time.monotonic() + max(2.0, 2 * side.block_time)
                unknown = True
                continue
            if slot == bytes(32):
                continue
            found = True
            from_block = rec.get_int(f"{role}_from_block") or side.config.start_block
            if self._first(rec.trade_id, f"no-event-{side.name}"):
                metrics.LOCKS_WITHOUT_EVENT.labels(side.name).inc()
                log.error("lock_without_event", chain=side.name, swap_sender=sender, reread_from=from_block)
                await self.store.note(rec.trade_id, ACTOR, "lock_without_event", chain=side.name,
                                           reread_from=from_block)
            self.reread(side.name, from_block)
        return found or unknown

    async def _recorded_st_lock(self, rec: TradeRecord, route: Route, view: TradeView) -> LockedEvent | None:
        """The seller's ST lock as the record describes it, when the escrow holds exactly that (one bounded slot
        read): the trade's parties, token and amount, T_st as observed (else as planned), the hashlock of the
        secret known. For a trade whose secret is public while the ST follower has not shown the lock (a
        restarted worker replaying the chain from the trade's first block while T_st runs out). None otherwise."""
        ins = rec.signed.instruction
        side = route.st
        head_st = view.head_st if view.head_st is not None else view.now_st
        # T_st as observed, and as planned (a lock made again after a re-plan stands on the planned one); only
        # those the escrow still accepts a claim on (strictly before T_st): a claim after it is mined and reverts
        timelocks = [t for t in dict.fromkeys((rec.get_int("st_timelock"), rec.get_int("t_st"))) if t and head_st < t]
        if not timelocks or not side.fresh or time.monotonic() < self.slot_checks.get(side.name, 0):
            return None
        preimage = view.sc.preimage or view.seen_preimage or self._own_secret(rec)
        if preimage is None:
            return None
        hashlock = hashlib.sha256(preimage).digest()
        locks = [LockedEvent(ins.trade_id_bytes, ins.sellerStAccount, ins.buyerStAccount, ins.stToken, ins.stAmount,
                             hashlock, t, 0, "") for t in timelocks]
        try:  # bounded: a hung node must not hold up the decisions of the trades decided with this one
            slot = await asyncio.wait_for(side.ledger.swap_slot(locks[0].swap_id), NO_EVENT_CHECK_TIMEOUT)
        except (LedgerError, TimeoutError):
            self.slot_checks[side.name] = time.monotonic() + max(2.0, 2 * side.block_time)
            return None
        return next((lock for lock in locks if slot == lock.terms_hash), None)

    def _own_secret(self, rec: TradeRecord) -> bytes | None:
        """The trade's sealed secret, or None when there is none or it does not open with the keys held here (a
        retired key: the follower's view of the claim still gives the preimage; this must not set the trade
        aside meanwhile)."""
        sealed = rec.get("secret")
        if not sealed:
            return None
        try:
            return self.box.open(sealed, rec.trade_id)
        except SecretDecryptError:
            return None

    async def _note_from_blocks(self, rec: TradeRecord, route: Route, fence: str) -> None:
        """Remember, once, from which blocks this trade's events must be read after a restart."""
        st, sc = route.st, route.sc
        if rec.get_int("st_from_block") is None and st.follower and sc.follower and st.fresh and sc.fresh:
            await self.store.update(rec, {"st_from_block": max(0, st.follower.last_head - 64),
                                          "sc_from_block": max(0, sc.follower.last_head - 64)},
                                    actor=ACTOR, event=None, fence=fence)

    async def _apply(self, rec: TradeRecord, d: Decision, observed: dict[str, Any], log: Any, fence: str) -> bool:
        """Persist the decided state (compare-and-set, fenced, audited). True when the trade just finished."""
        if "secret" in observed:
            await self.store.update(rec, {"secret": observed.pop("secret")}, actor=ACTOR, event="secret_learned",
                                    fence=fence)
        if d.state != rec.state and can_transition(rec.state, d.state):
            old = rec.state
            await self.store.update(rec, {"state": d.state.value, **observed}, actor=ACTOR, event="state",
                                    fence=fence, **{"from": old.value, "to": d.state.value})
            log.info("trade_state", from_state=old.value, to_state=d.state.value)
            metrics.TRANSITIONS.labels(d.state.value).inc()
            if d.state is TradeState.SETTLED:
                metrics.SETTLE_SECONDS.observe(time.time() - float(rec.fields["created_at"]))
            return d.state in TERMINAL
        if observed:
            await self.store.update(rec, observed, actor=ACTOR, event=None, fence=fence)
        return False

    def _watch_timelocks(self, rec: TradeRecord, route: Route, st_leg: LegView, sc_leg: LegView, rnd: Round,
                         log: Any) -> None:
        """Count the least time left on live locks, and warn once a live lock has less than 2Δ left."""
        for leg, view, now in (("st", st_leg, rnd.now(route.st)), ("sc", sc_leg, rnd.now(route.sc))):
            if not view.active or view.lock is None:
                continue
            left = view.lock.timelock - now
            rnd.min_left[leg] = min(rnd.min_left[leg], left)
            # the claim is due once the other leg's claim made the secret public: under Δ left it races the refund
            due = sc_leg.claimed if leg == "st" else st_leg.claimed
            if due and left < route.policy.delta():
                rnd.claims_due_near[leg] += 1
                if self._first(rec.trade_id, f"racing-{leg}"):
                    rnd.alerts.append((rec.trade_id, "claim_racing_refund", {"leg": leg, "seconds_left": left},
                                       f"racing-{leg}"))
            if 0 < left < 2 * route.policy.delta():
                if self._first(rec.trade_id, f"near-{leg}"):
                    log.warning("timelock_near", leg=leg, seconds_left=left, state=rec.state.value)

    async def _prepare_secret(self, rec: TradeRecord, policy: TimingPolicy, now_st: int, log: Any,
                              fence: str, plan: bool = True) -> None:
        """Seller side, before any transaction: create s, persist it sealed with H and T_st (intent). Without
        `plan` (a holder-signed seller) T_st is left to the holder's authorisation, which must sign H."""
        ins: TradeInstruction = rec.signed.instruction
        t_st = min(ins.deadline, now_st + policy.st_lock_duration)
        if t_st - now_st < policy.min_st_window():
            return  # decide() will abort the trade once the deadline passes; nothing was locked
        secret = os.urandom(32)
        fields: dict[str, Any] = {"hashlock": hashlib.sha256(secret).hexdigest(),
                                  "secret": self.box.seal(secret, ins.tradeId)}
        said: dict[str, Any] = {"t_st": t_st} if plan else {"awaiting": "holder_authorization"}
        fields.update(said if plan else {})
        await self.store.update(rec, fields, actor=ACTOR, event="secret_created", fence=fence, **said)
        log.info("secret_created", **said)

    async def _replan_lock(self, rec: TradeRecord, policy: TimingPolicy, now_st: int, log: Any, fence: str) -> None:
        """The ST lock never went out in its window (the ST chain or this worker was down for long): give it a
        new T_st while the deadline leaves room, instead of letting the trade abort. The secret stays the same,
        so a lock from the old plan that lands after all still works with it; nothing is public before a lock."""
        t_st = rec.get_int("t_st")
        if rec.state is not TradeState.MATCHED or t_st is None or t_st - now_st >= policy.min_st_window():
            return  # (past MATCHED its lock was seen: a follower replaying it after a restart must not re-plan it)
        if self.in_flight((rec.trade_id, Action.LOCK_ST, b"")):  # Due.key of a lock
            return
        new_t_st = min(rec.signed.instruction.deadline, now_st + policy.st_lock_duration)
        if new_t_st - now_st < policy.min_st_window():
            return  # no room before the deadline: decide() aborts the trade, nothing was locked
        await self.store.update(rec, {"t_st": new_t_st}, actor=ACTOR, event="lock_replanned", fence=fence,
                                t_st=new_t_st, was=t_st)
        log.info("lock_replanned", t_st=new_t_st, was=t_st)

    async def _report_anomalies(self, rec: TradeRecord, d: Decision, foreign: list[Any], log: Any) -> None:
        for note in d.notes:
            if self._first(rec.trade_id, note):
                await self.store.note(rec.trade_id, ACTOR, "not_acting", reason=note)
                log.warning("counterparty_terms", reason=note)
        for ev in foreign:
            if self._first(rec.trade_id, ev.tx_hash):
                await self.store.note(rec.trade_id, ACTOR, "foreign_lock_ignored", sender=ev.sender,
                                           tx=ev.tx_hash, block=ev.block)
                log.warning("foreign_lock_ignored", sender=ev.sender, tx=ev.tx_hash)
        if d.one_sided and self._first(rec.trade_id, "one-sided"):
            log.error("atomicity_violation", notes=d.notes)

    def _seen_preimage(self, st_leg: LegView) -> bytes | None:
        """The ST lock's secret if a claim not yet k blocks deep revealed it (on any chain)."""
        if st_leg.lock is None or not st_leg.active:
            return None
        h = st_leg.lock.hashlock
        return next((p for side in self.routes.sides if (p := side.index.preimages.get(h)) is not None), None)


def _caught_up(side: ChainSide) -> bool:
    """The chain answers and its follower has read up to its head (not replaying after a restart): a lock it
    has not shown by now is missing, not merely not read yet."""
    follower = side.follower
    return side.fresh and follower is not None and side.head - follower.height <= 2 * side.confirmations + 2


class Quarantine:
    """Trades whose record or decision raised unexpectedly (a bug, a corrupted record): each is set aside for a
    pause that doubles on each failure (1 s to 60 s) and then tried again, so one bad trade never stalls the
    others and a transient cause heals by itself."""

    FIRST, LONGEST = 1.0, 60.0

    def __init__(self) -> None:
        self._held: dict[str, tuple[float, float]] = {}  # trade id -> (until, last pause), monotonic seconds

    def until(self, trade_id: str) -> float:
        """When the trade's current pause ends (0 when it is not set aside)."""
        return self._held.get(trade_id, (0.0, 0.0))[0]

    def held(self, trade_id: str, now: float) -> bool:
        entry = self._held.get(trade_id)
        return entry is not None and now < entry[0]

    def add(self, trade_id: str, now: float) -> float:
        """Set the trade aside; returns the pause in seconds."""
        last = self._held.get(trade_id, (0.0, 0.0))[1]
        pause = min(self.LONGEST, last * 2) if last else self.FIRST
        self._held[trade_id] = (now + pause, pause)
        metrics.QUARANTINED.set(len(self._held))
        return pause

    def clear(self, trade_id: str) -> None:
        if self._held.pop(trade_id, None) is not None:
            metrics.QUARANTINED.set(len(self._held))

    def __len__(self) -> int:
        return len(self._held)
