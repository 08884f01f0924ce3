"""When each trade is decided again: only when something about it changed, so a round's work follows what
happened, not how many trades are open.

A trade is due when (1) an escrow event of one of its swaps was confirmed or a claim revealed its preimage,
(2) one of its actions finished or its cooldown ended, (3) a timer it set ran out: the next instant at which
decide() may answer differently for the same chain events (a deadline, a timelock, the reveal cutoff, the
3Δ lock cutoff), or (4) the periodic reconciliation ran (every trade, as a net under everything above), or a
chain's freshness changed. decide() always reads the time itself, so a wake-up that comes late is only late,
never wrong.
"""

from __future__ import annotations

import heapq
import time

from relayer.protocol.rules import TimingPolicy
from relayer.store import TradeRecord

RECONCILE_EVERY = 5.0  # seconds between decisions of every trade this worker drives, whatever happened


class Schedule:
    """Dirty set plus timers, by trade id (0x-hex)."""

    def __init__(self, reconcile_every: float = RECONCILE_EVERY) -> None:
        self._dirty: set[str] = set()
        self._timers: list[tuple[float, str]] = []  # (monotonic time, trade id), a heap; stale entries allowed
        self._next_at: dict[str, float] = {}  # the earliest live timer per trade
        self.reconcile_every = reconcile_every
        self._next_reconcile = 0.0  # the first round decides everything

    def mark(self, trade_id: str) -> None:
        self._dirty.add(trade_id)

    def mark_all(self) -> None:
        """Decide every trade next round (after a start, a reconnect, a chain going stale or fresh)."""
        self._next_reconcile = 0.0

    def mark_at(self, trade_id: str, when: float) -> None:
        """Decide `trade_id` again at monotonic time `when` (kept only if earlier than its current timer)."""
        current = self._next_at.get(trade_id)
        if current is not None and current <= when:
            return  # an earlier timer (maybe due already, not yet taken) stands
        self._next_at[trade_id] = when
        heapq.heappush(self._timers, (when, trade_id))

    def take(self, candidates: list[str], now: float | None = None) -> list[str]:
        """The trades among `candidates` to decide this round; clears their marks."""
        now = time.monotonic() if now is None else now
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile_every
            self._dirty.clear()
            for tid in candidates:
                self._next_at.pop(tid, None)
            return list(candidates)
        while self._timers and self._timers[0][0] <= now:
            when, tid = heapq.heappop(self._timers)
            if self._next_at.get(tid) == when:
                del self._next_at[tid]
                self._dirty.add(tid)
        wanted = self._dirty
        out = [t for t in candidates if t in wanted]
        self._dirty = wanted.difference(out)  # marks of trades not ours yet stay
        if len(self._dirty) > 100_000:  # marks for trades another worker drives: never taken, bounded
            self._dirty.clear()
        if len(self._timers) > 4 * max(1, len(self._next_at)) + 1024:  # drop superseded heap entries
            self._timers = [(w, t) for w, t in self._timers if self._next_at.get(t) == w]
            heapq.heapify(self._timers)
        return out

    def forget(self, trade_id: str) -> None:
        self._dirty.discard(trade_id)
        self._next_at.pop(trade_id, None)


def next_instants(rec: TradeRecord, policy: TimingPolicy) -> list[int]:
    """The chain-time instants at which decide() may answer differently for a trade whose chain events did not
    change: its deadline, each timelock, the reveal cutoff (T_sc − Δ) and the buyer's lock cutoff (T_st − 3Δ).
    Each comes with the confirmation time after it, when the k-confirmed view catches up."""
    ins = rec.signed.instruction
    t_st = rec.get_int("st_timelock") or rec.get_int("t_st")
    t_sc = rec.get_int("sc_timelock") or rec.get_int("t_sc")
    out = [ins.deadline]
    if t_st:
        out += [t_st, t_st - policy.min_st_window()]
    if t_sc:
        out += [t_sc, t_sc - policy.reveal_window()]
    lag = int(policy.confirmations * policy.block_time) + 1
    return sorted({t + d for t in out for d in (1, lag, 2 * lag)})
