"""What a reorg deeper than the confirmation depth took out of trades already finished, put back.

Beyond the protocol's guarantee (the follower alerts), but the brief says trades are re-derived. The locks of the
trades finished lately are kept here with the end each had (its claim's preimage, public once claimed, or its
refund). After a deep reorg, or when the follower delivers such a lock live again, each gets back that end:
- a refund is made again: the lock goes to the stray book, refunded at its timelock (pays the sender back);
- a claim is made again with its preimage while its timelock is ahead, in the protocol's order: the coin claim
  first (through the reveal gate unless the trade's ST claim stands), the ST claim once the coin claim stands.
  Left live, the lock would refund at its timelock and take back what was paid for.
A claim that can no longer be made in time is an error alert for the operator. Kept in memory only, for the last
FINISHED_LOCKS_BLOCKS block times: a deeper or later reorg, or one after the worker restarted, is alerted only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import NamedTuple

from adapters.htlc import ClaimedEvent, LockedEvent, RefundedEvent
from relayer.actions import Due
from relayer.follow import ChainSide, LockInstance
from relayer.logging import get_logger
from relayer.protocol.rules import Action
from relayer.protocol.states import TradeState
from relayer.store import CorruptRecord, Store, TradeRecord
from relayer.strays import StrayBook

# locks of trades finished lately, per chain: those of the last FINISHED_LOCKS_BLOCKS block times, at most
# FINISHED_LOCKS_KEPT (memory stays flat at any rate)
FINISHED_LOCKS_KEPT = 5000
FINISHED_LOCKS_BLOCKS = 64

LockKey = tuple[bytes, bytes]  # (swap id, terms hash): several locks may use one swap id over time


class FinishedLock(NamedTuple):
    """A lock of a trade finished lately, and how it ended then (None: still live, a stray's)."""

    lock: LockedEvent
    state: TradeState
    at: float  # monotonic time the trade finished
    end: ClaimedEvent | RefundedEvent | None


def _key(lock: LockedEvent) -> LockKey:
    return lock.swap_id, lock.terms_hash


class FinishedLocks:
    """The locks of trades finished lately and the claims to make again (see the module docstring)."""

    def __init__(self, sides: list[ChainSide], store: Store, strays: StrayBook) -> None:
        self.sides = sides
        self.store = store
        self.strays = strays
        self.log = get_logger()
        self.kept: dict[str, OrderedDict[LockKey, FinishedLock]] = {side.name: OrderedDict() for side in sides}
        # chain -> swap id -> (lock, the preimage its claim had revealed): made again until the slot no longer
        # holds the lock, or its timelock passed
        self.reclaims: dict[str, dict[bytes, tuple[LockedEvent, bytes]]] = {side.name: {} for side in sides}
        # trades whose coin claim could not be made again in time: their ST claim is not made again either (the
        # buyer's coins go back to it at T_sc; the ST must go back to the seller)
        self.given_up: OrderedDict[bytes, None] = OrderedDict()

    def keep(self, side: ChainSide, instances: list[LockInstance], state: TradeState) -> None:
        """A trade finished: remember its locks on this chain and how each ended."""
        now = time.monotonic()
        kept = self.kept.setdefault(side.name, OrderedDict())
        for i in instances:
            kept[_key(i.lock)] = FinishedLock(i.lock, state, now, i.end)
        horizon = now - FINISHED_LOCKS_BLOCKS * side.block_time
        while kept and (len(kept) > FINISHED_LOCKS_KEPT or next(iter(kept.values())).at < horizon):
            kept.popitem(last=False)

    def claimed(self, side: ChainSide, lock: LockedEvent) -> bool:
        """This live lock (the follower delivered it again) had been claimed when its trade finished and is to be
        claimed again, not refunded as a stray: registers the claim. False when it had not, or too late for that."""
        kept = self.kept.get(side.name)
        f = kept.get(_key(lock)) if kept is not None else None
        if f is None or not isinstance(f.end, ClaimedEvent):
            return False
        return lock.swap_id in self.reclaims[side.name] or self._restore_claim(side, f)

    async def after_deep_reorg(self, side: ChainSide) -> None:
        """Read the slots of the locks of trades finished lately on this chain. A live one that had been claimed
        is claimed again (reclaims_due); one that had been refunded (or was a stray) is refunded again."""
        entries = list(self.kept.get(side.name, OrderedDict()).values())
        if not entries:
            return
        slots = await side.ledger.swap_slots([f.lock.swap_id for f in entries])
        refund: list[LockedEvent] = []
        for f, slot in zip(entries, slots):
            if slot != f.lock.terms_hash:
                continue
            if isinstance(f.end, ClaimedEvent):
                if f.lock.swap_id in self.reclaims[side.name] or self._restore_claim(side, f):
                    continue
                refund.append(f.lock)  # too late to claim: left live it would hold the asset forever
                continue
            refund.append(f.lock)
            self.log.warning("finished_trade_lock_live_again", trade_id="0x" + f.lock.trade_id.hex(), chain=side.name,
                             state=f.state.value, sender=f.lock.sender, timelock=f.lock.timelock,
                             then="refunded again at its timelock")
        await self._refund(side, refund)

    async def _refund(self, side: ChainSide, locks: list[LockedEvent]) -> None:
        if locks and await self.strays.keep(side.name, locks):
            self.log.info("late_locks_kept", chain=side.name, locks=len(locks), after="deep reorg")

    def _restore_claim(self, side: ChainSide, f: FinishedLock) -> bool:
        """Register the claim to make again; False (an error alert, the lock forgotten here, so refunded as a
        stray) when its timelock has passed."""
        lock = f.lock
        assert isinstance(f.end, ClaimedEvent)
        late = lock.timelock <= side.now()
        (self.log.error if late else self.log.warning)(
            "finished_trade_lock_live_again", trade_id="0x" + lock.trade_id.hex(), chain=side.name,
            state=f.state.value, sender=lock.sender, timelock=lock.timelock,
            then="past its timelock: refunded, not claimed again" if late else "claimed again")
        if late:
            self.kept[side.name].pop(_key(lock), None)
            if side.role == "sc":
                self._give_up(lock.trade_id)
            return False
        self.reclaims[side.name][lock.swap_id] = (lock, f.end.preimage)
        return True

    def _give_up(self, trade_id: bytes) -> None:
        self.given_up[trade_id] = None
        while len(self.given_up) > FINISHED_LOCKS_KEPT:
            self.given_up.popitem(last=False)

    async def reclaims_due(self, observed_at: float) -> list[Due]:
        """The claims to make again this round (nothing read when there are none). A coin claim goes through the
        reveal gate unless the trade's ST lock is no longer live (its claim stands: the secret is public there,
        and the escrow no longer holds the ST the gate would look for). An ST claim waits until the trade's coin
        claim stands, and is dropped when that one could not be made in time."""
        found: list[tuple[ChainSide, LockedEvent, bytes]] = []
        for side in self.sides:
            pending = self.reclaims[side.name]
            if not pending or not side.fresh:
                continue
            entries = list(pending.values())
            slots = await side.ledger.swap_slots([lock.swap_id for lock, _ in entries])
            refund: list[LockedEvent] = []
            for (lock, preimage), slot in zip(entries, slots):
                if slot != lock.terms_hash:
                    del pending[lock.swap_id]  # claimed (by us or anyone) or refunded
                    continue
                if lock.timelock <= side.head_timestamp:
                    reason = "its timelock passed before the claim was made again"
                    if side.role == "sc":
                        self._give_up(lock.trade_id)
                elif side.role == "st" and lock.trade_id in self.given_up:
                    reason = "the coin claim could not be made again before its timelock"
                else:
                    found.append((side, lock, preimage))
                    continue
                del pending[lock.swap_id]  # live, and not to be claimed: refunded as a stray at its timelock
                self.kept[side.name].pop(_key(lock), None)
                refund.append(lock)
                self.log.error("reclaim_given_up", trade_id="0x" + lock.trade_id.hex(), chain=side.name,
                               timelock=lock.timelock, reason=reason, then="refunded at its timelock")
            await self._refund(side, refund)
        if not found:
            return []
        broken: dict[str, CorruptRecord] = {}
        recs = {rec.trade_id: rec for rec in await self.store.get_many(
            sorted({"0x" + lock.trade_id.hex() for _, lock, _ in found}), broken=broken)}
        for tid in broken:
            self.log.error("reclaim_record_unreadable", trade_id=tid)
        items = [(side, lock, preimage, recs[tid]) for side, lock, preimage in found
                 if (tid := "0x" + lock.trade_id.hex()) in recs]
        other_live = await self._other_legs_live(items)
        out = []
        for (side, lock, preimage, rec), live in zip(items, other_live):
            if side.role == "st":
                if live is not False:
                    continue  # its coin claim does not stand yet (or its ledger cannot tell): asked next round
                out.append(Due(rec, Action.CLAIM_ST, None, lock, None, observed_at, chain=side.name,
                               preimage=preimage, revealed=True))
            else:
                out.append(Due(rec, Action.CLAIM_SC, None, None, lock, observed_at, chain=side.name,
                               preimage=preimage, revealed=live is False))
        return out

    async def _other_legs_live(self, items: list[tuple[ChainSide, LockedEvent, bytes, TradeRecord]]) -> list[bool | None]:
        """For each claim to make again, whether the trade's lock on its other ledger (the coin lock for an ST
        claim, the ST lock for a coin claim) is live on chain now; None when that ledger is not fresh or unknown."""
        by_side: dict[str, list[tuple[int, bytes]]] = {}
        out: list[bool | None] = [None] * len(items)
        for n, (side, _, _, rec) in enumerate(items):
            ins = rec.signed.instruction
            role, chain_id, sender = ("sc", ins.scChainId, ins.buyerScAccount) if side.role == "st" else \
                ("st", ins.stChainId, ins.sellerStAccount)
            other = next((s for s in self.sides if s.role == role and s.chain_id == chain_id), None)
            if other is None or not other.fresh:
                continue
            by_side.setdefault(other.name, []).append((n, other.ledger.swap_id_of(sender, ins.trade_id_bytes)))
        for name, wanted in by_side.items():
            side = next(s for s in self.sides if s.name == name)
            slots = await side.ledger.swap_slots([sid for _, sid in wanted])
            for (n, _), slot in zip(wanted, slots):
                out[n] = slot != bytes(32)
        return out
