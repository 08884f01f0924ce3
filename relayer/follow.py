"""What one chain's escrow has shown so far (k-confirmed), as the engine reads it: locks and how each ended.

A swap id (sender, tradeId) can be locked again once its swap was claimed or refunded, so "is this swap id
claimed?" is not a question about a lock. The index keeps every Locked event of a trade and every Claimed /
Refunded event of a swap id in chain order, and pairs them: each Claimed/Refunded ends the latest lock of its
swap id before it (the escrow allows one live lock per swap id). A reorg rewind drops the events above a
height; the pairing is recomputed from what is left, so the order events arrive in never matters.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from adapters.htlc import ClaimedEvent, EscrowEvent, LockedEvent, RefundedEvent, SettledEvent
from relayer.protocol.rules import LegView, ObservedLock


@dataclass(frozen=True)
class LockInstance:
    """One lock on chain and how it ended (claimed, refunded, or not yet)."""

    lock: LockedEvent
    end: ClaimedEvent | RefundedEvent | None = None

    @property
    def live(self) -> bool:
        return self.end is None

    def view(self) -> LegView:
        """The lock as the protocol rules see it."""
        ev = self.lock
        claim = self.end if isinstance(self.end, ClaimedEvent) else None
        return LegView(
            lock=ObservedLock(ev.sender, ev.receiver, ev.token, ev.amount, ev.hashlock, ev.timelock, ev.tx_hash,
                              ev.block),
            claimed=claim is not None, preimage=claim.preimage if claim else None,
            refunded=isinstance(self.end, RefundedEvent),
        )


class ChainIndex:
    """The escrow events of one chain seen so far (k-confirmed), by trade id and by swap id."""

    def __init__(self) -> None:
        self.locks: dict[bytes, list[LockedEvent]] = defaultdict(list)  # trade id -> locks, chain order
        self.ends: dict[bytes, list[ClaimedEvent | RefundedEvent]] = defaultdict(list)  # swap id -> chain order
        self.settlements: dict[bytes, list[SettledEvent]] = defaultdict(list)
        self.preimages: dict[bytes, bytes] = {}  # sha256 -> preimage, from claims not yet k blocks deep

    def learn_preimages(self, preimages: list[bytes]) -> None:
        for p in preimages:
            self.preimages[hashlib.sha256(p).digest()] = p

    def apply(self, events: list[EscrowEvent]) -> None:
        """Add newly confirmed events (the follower delivers them in chain order)."""
        for ev in events:
            if isinstance(ev, LockedEvent):
                self.locks[ev.trade_id].append(ev)
            elif isinstance(ev, SettledEvent):
                self.settlements[ev.trade_id].append(ev)
            else:
                self.ends[ev.swap_id].append(ev)

    def instances(self, trade_id: bytes) -> list[LockInstance]:
        """Every lock of this trade id (any sender), in chain order, each with the event that ended it."""
        out = []
        locks = self.locks.get(trade_id, [])
        by_swap: dict[bytes, list[LockedEvent]] = defaultdict(list)
        for ev in locks:
            by_swap[ev.swap_id].append(ev)
        ended: dict[tuple[str, int], ClaimedEvent | RefundedEvent] = {}
        for sid, swap_locks in by_swap.items():
            ends = iter(self.ends.get(sid, []))
            pending = next(ends, None)
            for i, ev in enumerate(swap_locks):
                nxt = swap_locks[i + 1] if i + 1 < len(swap_locks) else None
                # skip ends older than this lock (they ended an earlier lock that we no longer hold)
                while pending is not None and _position(pending) < _position(ev):
                    pending = next(ends, None)
                if pending is not None and (nxt is None or _position(pending) < _position(nxt)):
                    ended[(ev.tx_hash, ev.log_index)] = pending
                    pending = next(ends, None)
        for ev in locks:
            out.append(LockInstance(ev, ended.get((ev.tx_hash, ev.log_index))))
        return out

    def rewind(self, height: int) -> None:
        """Forget everything derived from blocks above `height` (they were reorged out)."""
        for tid in list(self.locks):
            self.locks[tid] = [e for e in self.locks[tid] if e.block <= height]
        for sid in list(self.ends):
            self.ends[sid] = [e for e in self.ends[sid] if e.block <= height]
        for tid in list(self.settlements):
            self.settlements[tid] = [e for e in self.settlements[tid] if e.block <= height]

    def live_trade_ids(self) -> set[bytes]:
        """Trade ids with a lock that has not ended (it may still need a refund)."""
        return {tid for tid in self.locks if any(i.live for i in self.instances(tid))}

    def retain(self, trade_ids: set[bytes]) -> None:
        """Keep only what belongs to these trades (a worker sees every trade's events, drives only some)."""
        self.locks = defaultdict(list, {t: v for t, v in self.locks.items() if t in trade_ids and v})
        self.settlements = defaultdict(list, {t: v for t, v in self.settlements.items() if t in trade_ids and v})
        kept = {e.swap_id for evs in self.locks.values() for e in evs}
        self.ends = defaultdict(list, {k: v for k, v in self.ends.items() if k in kept})
        hashlocks = {e.hashlock for evs in self.locks.values() for e in evs}
        self.preimages = {h: p for h, p in self.preimages.items() if h in hashlocks}

    def forget(self, trade_id: bytes) -> None:
        """Drop a finished trade's events (its live strays are kept in Redis, see Store.add_strays)."""
        for ev in self.locks.pop(trade_id, []):
            self.preimages.pop(ev.hashlock, None)
            self.ends.pop(ev.swap_id, None)
        self.settlements.pop(trade_id, None)


def _position(ev: LockedEvent | ClaimedEvent | RefundedEvent) -> tuple[int, int]:
    return (ev.block, ev.log_index)
