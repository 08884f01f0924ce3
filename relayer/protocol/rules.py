"""Protocol rules: Δ, checking a counterparty's lock, and deciding what a trade needs next.

`decide()` is the stateless heart of the relayer (as in yui-relayer's relay loop): from what both chains
show (k-confirmed) and what this relayer may do (its roles), it returns the trade's state and the actions
due now. It does no I/O, so every rule is unit-tested in microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from relayer.protocol.instruction import TradeInstruction
from relayer.protocol.states import TradeState


@dataclass(frozen=True)
class TimingPolicy:
    """Inputs of Δ and of the timelocks. Δ = k × block time + inclusion delay + max clock skew + margin.

    The clock term is a configured bound on the difference between the two chains' block timestamps, not
    the instantaneous measurement: block timestamps are quantised by block time, so a measured offset is
    noisy, and Δ must be the same number for the buyer who picks T_sc and the seller who checks it. The
    engine measures the offset every round and stops new locks when it exceeds the bound.
    """

    confirmations: int = 1
    block_time: float = 1.0
    inclusion_delay: float = 3.0
    max_clock_skew: float = 2.0
    margin: float = 5.0
    st_lock_duration: int = 300  # T_st - now when the seller locks (capped by the instruction's deadline)

    def delta(self) -> int:
        """Seconds the second leg must expire before the first (Herlihy's Δ)."""
        return math.ceil(self.confirmations * self.block_time + self.inclusion_delay + self.max_clock_skew
                         + self.margin)

    def min_st_window(self) -> int:
        """Least time left on T_st for which locking the ST (seller) or the SC (buyer) is still safe: 3Δ.

        T_sc = T_st - Δ; the buyer's SC lock needs Δ to be confirmed and seen, and the seller's reveal needs Δ
        before T_sc (reveal_window). So nobody locks with less than 3Δ left on T_st.
        """
        return 3 * self.delta()

    def reveal_window(self) -> int:
        """Least time left before T_sc for which the seller may reveal the secret (claim the SC): Δ.

        A claim waiting in a mempool has already published the secret; if it misses T_sc, the buyer takes the ST
        with it and refunds its SC. Δ covers the confirmations, an inclusion delay under congestion (with a fee
        set to win it), the clocks' difference and a margin. The buyer, not the seller, chooses when to lock, so
        a lock made later than this is never claimed: it is treated as wrong terms and refunded.
        """
        return self.delta()


@dataclass(frozen=True)
class ObservedLock:
    """A Locked event as seen on chain with k confirmations."""

    sender: str
    receiver: str
    token: str
    amount: int
    hashlock: bytes
    timelock: int
    tx_hash: str = ""
    block: int = 0


@dataclass(frozen=True)
class LegView:
    """One leg (ST or SC) of a trade as the chain shows it, for the expected sender's swap."""

    lock: ObservedLock | None = None
    claimed: bool = False
    preimage: bytes | None = None
    refunded: bool = False

    @property
    def active(self) -> bool:
        return self.lock is not None and not self.claimed and not self.refunded


class Action(StrEnum):
    LOCK_ST = "lock_st"
    LOCK_SC = "lock_sc"
    CLAIM_SC = "claim_sc"
    CLAIM_ST = "claim_st"
    REFUND_ST = "refund_st"
    REFUND_SC = "refund_sc"
    SETTLE_DVP = "settle_dvp"  # same-ledger path: both legs in one AtomicDvP transaction


@dataclass(frozen=True)
class Roles:
    """What this relayer may sign for: the seller's ST account, the buyer's SC account, gas on each chain."""

    seller: bool = False
    buyer: bool = False
    st_gas: bool = False  # holds some key on the ST chain (to claim/refund as a watcher)
    sc_gas: bool = False


@dataclass(frozen=True)
class TradeView:
    """Everything decide() needs about one trade."""

    instruction: TradeInstruction
    st: LegView
    sc: LegView
    now_st: int  # projected chain clocks: used to START things (locks, the seller's SC claim)
    now_sc: int
    head_st: int | None = None  # timestamps of the latest blocks: used to GIVE UP a claim or to refund.
    head_sc: int | None = None  # A claim is tried while the chain would still accept it (next block < T).
    clock_offset: float = 0.0  # now_st - now_sc
    our_hashlock: bytes | None = None  # set once the seller side persisted its secret
    planned_t_st: int | None = None  # set with the secret
    sc_lock_rejected: bool = False  # a counterparty SC lock with wrong terms was seen (never acted on)
    # timestamp of the last coin-ledger block whose events were all read (None: use head_sc). A trade with no SC
    # lock seen is over only once this passes T_st: a late lock made before then is still seen and refunded.
    sc_confirmed_time: int | None = None
    # whether each chain answered this round: nothing that needs a chain is started while it is stale; above
    # all the seller never reveals the secret (claims the SC) while the buyer could not claim the ST
    st_fresh: bool = True
    sc_fresh: bool = True
    revealed: bool = False  # an earlier round saw the SC claimed (persisted state SC_CLAIMED): the secret is public
    # the ST lock's secret, read from a claim not yet k blocks deep: enough for the ST claim (a secret stays valid
    # whatever happens to the block that revealed it), never for a state change
    seen_preimage: bytes | None = None
    # a holder-signed buyer (DVP_HOLDER_SIGNED): its SC lock waits for the holder's authorisation, whose
    # timelock it takes
    sc_lock_authorized: bool = True
    planned_t_sc: int | None = None


@dataclass
class Decision:
    state: TradeState
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    one_sided: bool = False  # an atomicity violation: must never happen; alert


def check_st_lock(ins: TradeInstruction, lock: ObservedLock) -> list[str]:
    """Problems with the seller's ST lock as the buyer checks it (empty list = acceptable terms)."""
    problems = []
    if lock.sender != ins.sellerStAccount:
        problems.append(f"sender {lock.sender} is not the seller {ins.sellerStAccount}")
    if lock.token != ins.stToken:
        problems.append(f"token {lock.token} is not {ins.stToken}")
    if lock.amount != ins.stAmount:
        problems.append(f"amount {lock.amount} is not {ins.stAmount}")
    if lock.receiver != ins.buyerStAccount:
        problems.append(f"receiver {lock.receiver} is not the buyer {ins.buyerStAccount}")
    if lock.hashlock == bytes(32):
        problems.append("hashlock is zero")
    if lock.timelock > ins.deadline:
        problems.append(f"timelock {lock.timelock} is after the trade deadline {ins.deadline}")
    return problems


def check_sc_lock(
    ins: TradeInstruction, lock: ObservedLock, hashlock: bytes | None, t_st: int | None, delta: int
) -> list[str]:
    """Problems with the buyer's SC lock as the seller checks it (empty list = acceptable terms)."""
    problems = []
    if lock.sender != ins.buyerScAccount:
        problems.append(f"sender {lock.sender} is not the buyer {ins.buyerScAccount}")
    if lock.token != ins.scToken:
        problems.append(f"token {lock.token} is not {ins.scToken}")
    if lock.amount != ins.scAmount:
        problems.append(f"amount {lock.amount} is not {ins.scAmount}")
    if lock.receiver != ins.sellerScAccount:
        problems.append(f"receiver {lock.receiver} is not the seller {ins.sellerScAccount}")
    if hashlock is not None and lock.hashlock != hashlock:
        problems.append("hashlock differs from the ST lock's")
    if t_st is not None and lock.timelock > t_st - delta:
        problems.append(f"timelock {lock.timelock} is later than T_st - Δ = {t_st - delta}")
    return problems


def sc_timelock_for(t_st: int, delta: int) -> int:
    """The buyer's SC timelock: Δ before the ST's."""
    return t_st - delta


def choose_lock(candidates: list[LegView], problems: Callable[[ObservedLock], list[str]]) -> int | None:
    """Which of the expected sender's locks under one trade id the protocol follows (index into `candidates`,
    in chain order): the first with acceptable terms, else the latest. A swap id can be locked again once its
    swap ended, so there may be several; every lock not chosen is never claimed and is refunded at its timelock.
    The choice depends on terms only, never on time, so it cannot change from one round to the next."""
    for i, leg in enumerate(candidates):
        if leg.lock is not None and not problems(leg.lock):
            return i
    return len(candidates) - 1 if candidates else None


def decide(view: TradeView, roles: Roles, policy: TimingPolicy) -> Decision:
    """The trade's state and the actions due now, from chain facts alone (plus our own secret's existence)."""
    ins = view.instruction
    st, sc = view.st, view.sc
    delta = policy.delta()
    skew_ok = abs(view.clock_offset) <= policy.max_clock_skew
    t_st = st.lock.timelock if st.lock else view.planned_t_st
    st_problems = check_st_lock(ins, st.lock) if st.lock else []
    hashlock = st.lock.hashlock if st.lock else view.our_hashlock
    sc_problems = check_sc_lock(ins, sc.lock, hashlock, t_st, delta) if sc.lock else []
    d = Decision(state=TradeState.MATCHED)
    d.notes += [f"ST lock: {p}" for p in st_problems] + [f"SC lock: {p}" for p in sc_problems]

    # -- state, from the chains
    # A secret read at depth 0 serves a buyer-side relayer at once. A relayer that is also the seller waits for its
    # own SC claim to be k deep: if that block were lost (a reorg, a node restarted without it) after the ST claim
    # went out, the seller would have delivered unpaid should the SC claim not land again before T_sc.
    preimage_public = (sc.preimage or st.preimage or view.revealed
                       or (view.seen_preimage is not None and not roles.seller))
    if st.claimed and sc.claimed:
        d.state = TradeState.SETTLED
        return d
    if (sc.claimed and st.refunded) or (st.claimed and sc.refunded):
        d.state, d.one_sided = TradeState.ONE_SIDED, True
        d.notes.append("ONE-SIDED: SC claimed but ST refunded" if sc.claimed else "ONE-SIDED: ST claimed but SC refunded")
        return d
    # "Expired" means the chain itself is past the timelock: its latest block is at or after T, so no later
    # block can accept a claim and a refund will succeed. A projected clock may run ahead of a chain that
    # stalled or restarted; judging expiry by it would give up a claim the chain still accepts.
    head_st = view.head_st if view.head_st is not None else view.now_st
    head_sc = view.head_sc if view.head_sc is not None else view.now_sc
    st_expired = st.lock is not None and head_st >= st.lock.timelock
    sc_expired = sc.lock is not None and head_sc >= sc.lock.timelock
    if sc.claimed or st.claimed:
        d.state = TradeState.SC_CLAIMED
    elif (st.active and st_expired) or (sc.active and sc_expired):
        d.state = TradeState.REFUNDING
    elif sc.active and not sc_problems:
        d.state = TradeState.SC_LOCKED
    elif st.active and not st_problems:
        d.state = TradeState.ST_LOCKED
    else:
        no_more_st = st.refunded or (st.lock is None and head_st >= (view.planned_t_st or ins.deadline))
        sc_seen_until = view.sc_confirmed_time if view.sc_confirmed_time is not None else head_sc
        no_more_sc = sc.refunded or (sc.lock is not None and not sc.active) or (
            sc.lock is None and (t_st is None or sc_seen_until >= t_st))
        if not st.active and not sc.active and no_more_st and no_more_sc:
            d.state = TradeState.ABORTED
            return d
        if st.active or sc.active:
            d.state = TradeState.REFUNDING  # only wrong-terms locks remain: they wait for their timelock

    # -- refunds are due by themselves when a timelock passes (our sender's leg, or as a watcher)
    if st.active and st_expired and (roles.seller or roles.st_gas):
        d.actions.append(Action.REFUND_ST)
    if sc.active and sc_expired and (roles.buyer or roles.sc_gas):
        d.actions.append(Action.REFUND_SC)

    # -- claims: the ST for the buyer as soon as the secret is public (any watcher), strictly before T_st
    st_claimable = st.active and not st_expired and not st_problems
    if preimage_public and st_claimable and (roles.st_gas or roles.seller or roles.buyer):
        d.actions.append(Action.CLAIM_ST)
    if roles.seller and view.our_hashlock is not None and sc.lock is not None and sc.active and not sc_problems \
            and st_claimable:
        # The reveal: only with at least Δ left before T_sc (the buyer chose when to lock; a later lock is never
        # claimed), with both chains answering and their clocks within the bound Δ was built on, so that the ST
        # claim can follow (T_sc <= T_st - Δ was checked with the terms). The ST claim waits for this one to be k
        # deep (above): sent together, an ST claim could land while an SC claim held up by an outage misses T_sc.
        # Once the secret is out (our claim seen on chain, maybe since reorged away), the SC is collected while
        # the chain still accepts it: withholding the claim then would protect nothing.
        left = sc.lock.timelock - view.now_sc
        if preimage_public or view.seen_preimage is not None:
            if not sc_expired:
                d.actions.append(Action.CLAIM_SC)
        elif left < policy.reveal_window():
            d.notes.append(f"SC lock leaves less than Δ={policy.reveal_window()}s before T_sc: too late to reveal "
                           "the secret; treated as wrong terms, refunds follow")
        elif not skew_ok:
            d.notes.append(f"chain clocks differ by {view.clock_offset:.0f}s > {policy.max_clock_skew}s: not revealing")
        else:
            d.actions.append(Action.CLAIM_SC)
    if roles.seller and st.claimed and sc.active and not sc_expired and not sc_problems:
        d.actions.append(Action.CLAIM_SC)  # the ST claim landed first: collect the payment too

    # -- locks
    if (
        roles.seller
        and st.lock is None
        and not st.refunded
        and view.planned_t_st is not None
        and view.planned_t_st - view.now_st >= policy.min_st_window()
    ):
        if skew_ok:
            d.actions.append(Action.LOCK_ST)
        else:
            d.notes.append(f"chain clocks differ by {view.clock_offset:.0f}s > {policy.max_clock_skew}s: not locking")
    if roles.buyer and st.lock is not None and st.active and not st_problems and sc.lock is None and not sc.refunded \
            and view.sc_lock_authorized:
        t_sc = view.planned_t_sc if view.planned_t_sc is not None else sc_timelock_for(st.lock.timelock, delta)
        # 3Δ left on T_st = 2Δ left on T_sc: Δ for this lock to be confirmed and seen, Δ for the seller's reveal
        if t_sc - view.now_sc >= policy.min_st_window() - delta and skew_ok:
            d.actions.append(Action.LOCK_SC)
        elif not skew_ok:
            d.notes.append(f"chain clocks differ by {view.clock_offset:.0f}s > {policy.max_clock_skew}s: not locking")
        else:
            d.notes.append(f"too late to lock SC: T_st {st.lock.timelock} leaves less than 3Δ={3 * delta}s")
    if st_problems and roles.buyer:
        d.notes.append("ST lock has wrong terms: not acting on it")
    needs = {Action.LOCK_ST: (True, True), Action.LOCK_SC: (True, True), Action.CLAIM_SC: (True, True),
             Action.CLAIM_ST: (True, False), Action.REFUND_ST: (True, False), Action.REFUND_SC: (False, True)}
    d.actions = [a for a in dict.fromkeys(d.actions)
                 if (view.st_fresh or not needs[a][0]) and (view.sc_fresh or not needs[a][1])]
    return d


@dataclass(frozen=True)
class AtomicView:
    """A same-ledger trade as the chain shows it: whether AtomicDvP settled exactly our terms."""

    instruction: TradeInstruction
    settled: bool  # a k-confirmed Settled event with our terms' digest
    now: int  # projected chain clock: used to start the settlement
    confirmed_time: int  # timestamp of the last block whose events were all read


def decide_atomic(view: AtomicView, roles: Roles, policy: TimingPolicy) -> Decision:
    """Same-ledger trades: one transaction moves both legs or none, so there is no one-sided state to guard.

    ABORTED is final only once every block up to one stamped at or after the deadline has been read: the
    contract refuses terms at or after their deadline and block times never go back, so nothing can settle.
    """
    ins = view.instruction
    if view.settled:
        return Decision(TradeState.SETTLED)
    if view.confirmed_time >= ins.deadline:
        return Decision(TradeState.ABORTED)
    d = Decision(TradeState.MATCHED)
    if not (roles.seller and roles.buyer):
        d.notes.append("same-ledger DvP needs both parties' signatures; this relayer holds only one: waiting")
    elif view.now + policy.inclusion_delay < ins.deadline:
        d.actions.append(Action.SETTLE_DVP)
    return d
