"""Why a trade waits and what happens next, in words an operator can act on ("waiting for the buyer's SC lock;
the ST is refunded to the seller at T_st if none"). Derived from the recorded state, the timelocks and which
parties' keys this relayer holds; no I/O, so the dashboard and the API say the same thing."""

from __future__ import annotations

from dataclasses import dataclass

from relayer.protocol.rules import Roles
from relayer.protocol.states import TradeState


@dataclass(frozen=True)
class Waiting:
    """What the trade waits for now, what happens next, and when (Unix seconds, chain time; None: no deadline)."""

    on: str
    then: str
    at: int | None = None
    by_us: bool = False  # the next step is ours to send (False: a counterparty's, or only time)


def explain(state: TradeState, roles: Roles, *, deadline: int, t_st: int | None, t_sc: int | None,
            secret_created: bool, watch_only: bool = False) -> Waiting | None:
    """None for a finished trade (nothing to wait for)."""
    if state is TradeState.ONE_SIDED:
        return Waiting("nothing: atomicity was lost (one leg claimed, the other refunded)",
                       "the operator settles the difference with the counterparty, off-ledger")
    if state in (TradeState.SETTLED, TradeState.ABORTED, TradeState.REJECTED):
        return None
    if watch_only or not (roles.seller or roles.buyer):
        prefix = "marked watch-only: " if watch_only else "no key of either party here: "
        return Waiting(prefix + f"the counterparties' relayers act; this one only watches ({state.value})",
                       "refunds as a watcher when a timelock passes" if roles.st_gas or roles.sc_gas else
                       "nothing: it holds no key on these ledgers", t_sc or t_st or deadline)
    if state is TradeState.MATCHED:
        if roles.seller:
            on = "sending the seller's ST lock" if secret_created else "preparing the seller's secret and ST lock"
            return Waiting(on, "aborted at the deadline if it cannot go out", deadline, by_us=True)
        return Waiting("the seller's ST lock", "aborted at the deadline if none", deadline)
    if state is TradeState.ST_LOCKED:
        if roles.buyer:
            return Waiting("sending the buyer's SC lock", "the ST is refunded to the seller at T_st if it cannot go "
                           "out in time", t_st, by_us=True)
        return Waiting("the buyer's SC lock", "the ST is refunded to the seller at T_st if none", t_st)
    if state is TradeState.SC_LOCKED:
        if roles.seller:
            return Waiting("sending the seller's SC claim (the reveal)", "if it cannot be made Δ before T_sc, both "
                           "legs are refunded: the SC at T_sc, the ST at T_st", t_sc, by_us=True)
        return Waiting("the seller's SC claim (the reveal)", "the SC is refunded to the buyer at T_sc and the ST to "
                       "the seller at T_st if the seller does not claim", t_sc)
    if state is TradeState.SC_CLAIMED:
        if roles.buyer or roles.st_gas:
            return Waiting("sending the buyer's ST claim (the secret is public)", "it must be mined before T_st",
                           t_st, by_us=True)
        return Waiting("the buyer's ST claim (the secret is public)", "the ST goes back to the seller at T_st if "
                       "nobody claims it: the buyer's loss", t_st)
    # REFUNDING: only timelocks are left to pass
    left = [t for t in (t_sc, t_st) if t is not None]
    return Waiting("the timelocks, to refund what is still locked", "each lock is refunded at its timelock (SC at "
                   "T_sc, ST at T_st)", min(left) if left else deadline, by_us=roles.seller or roles.buyer)
