"""The trade state machine: which states exist, which are terminal, which transitions are legal."""

from __future__ import annotations

from enum import StrEnum


class TradeState(StrEnum):
    MATCHED = "MATCHED"  # accepted, nothing locked yet
    ST_LOCKED = "ST_LOCKED"  # the seller's ST lock is confirmed with valid terms
    SC_LOCKED = "SC_LOCKED"  # the buyer's SC lock is confirmed with valid terms
    SC_CLAIMED = "SC_CLAIMED"  # the seller claimed the SC: the secret is public, the ST claim is due
    SETTLED = "SETTLED"  # both legs claimed
    REFUNDING = "REFUNDING"  # a timelock passed with a leg still locked: refunds are due
    ABORTED = "ABORTED"  # every lock that existed was refunded (or none was ever made)
    REJECTED = "REJECTED"  # invalid input: never acted on
    # one leg claimed, the other refunded: atomicity was lost (only possible beyond the HTLC guarantee, e.g. an
    # outage longer than the margin while the secret was public). Final; the operator settles it off-ledger.
    ONE_SIDED = "ONE_SIDED"


TERMINAL = frozenset({TradeState.SETTLED, TradeState.ABORTED, TradeState.REJECTED, TradeState.ONE_SIDED})

_FORWARD = [TradeState.MATCHED, TradeState.ST_LOCKED, TradeState.SC_LOCKED, TradeState.SC_CLAIMED,
            TradeState.SETTLED]

ALLOWED: dict[TradeState, frozenset[TradeState]] = {
    TradeState.MATCHED: frozenset({TradeState.ST_LOCKED, TradeState.SC_LOCKED, TradeState.SC_CLAIMED,
                                   TradeState.SETTLED, TradeState.REFUNDING, TradeState.ABORTED,
                                   TradeState.REJECTED, TradeState.ONE_SIDED}),
    TradeState.ST_LOCKED: frozenset({TradeState.SC_LOCKED, TradeState.SC_CLAIMED, TradeState.SETTLED,
                                     TradeState.REFUNDING, TradeState.ABORTED, TradeState.ONE_SIDED}),
    TradeState.SC_LOCKED: frozenset({TradeState.SC_CLAIMED, TradeState.SETTLED, TradeState.REFUNDING,
                                     TradeState.ABORTED, TradeState.ONE_SIDED}),
    TradeState.SC_CLAIMED: frozenset({TradeState.SETTLED, TradeState.ONE_SIDED}),
    TradeState.REFUNDING: frozenset({TradeState.ABORTED, TradeState.SC_CLAIMED, TradeState.SETTLED,
                                     TradeState.ONE_SIDED}),
    TradeState.SETTLED: frozenset(),
    TradeState.ABORTED: frozenset(),
    TradeState.REJECTED: frozenset(),
    TradeState.ONE_SIDED: frozenset(),
}


def can_transition(current: TradeState, new: TradeState) -> bool:
    """True when moving from `current` to `new` is legal (staying put is not a transition)."""
    return new in ALLOWED[current]
