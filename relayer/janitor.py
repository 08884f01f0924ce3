"""What keeps the escrow and the worker clean: every lock seen under one of our trade ids ends claimed or
refunded (strays kept in Redis and refunded at their timelock), finished trades are archived, and the chain
index and in-memory traces of finished trades are dropped so memory stays flat."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from adapters.htlc import ClaimedEvent, LockedEvent, RefundedEvent
from relayer.actions import Due
from relayer.config import Settings
from relayer.follow import ChainSide, LockInstance
from relayer.logging import get_logger
from relayer.protocol.rules import Action
from relayer.protocol.states import TERMINAL, TradeState
from relayer.store import Store, TradeRecord

SWEEP_EVERY = 2.0  # seconds between looks for late locks and strays whose timelock passed
# locks of trades finished lately, per chain, read again after a reorg deeper than k took out their ends: those
# of the last FINISHED_LOCKS_BLOCKS block times, at most FINISHED_LOCKS_KEPT (memory stays flat at any rate)
FINISHED_LOCKS_KEPT = 5000
FINISHED_LOCKS_BLOCKS = 64


class FinishedLock(NamedTuple):
    """A lock of a trade finished lately, and how it ended then (None: still live, a stray's)."""

    lock: LockedEvent
    state: TradeState
    at: float  # monotonic time the trade finished
    end: ClaimedEvent | RefundedEvent | None


class StrayBook:
    """Locks the protocol does not follow, persisted once each (Redis ZSET per chain, by timelock) so that a
    refund at their timelock survives a restart."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._kept: set[tuple[str, str, int]] = set()  # (chain, tx, log index) already in Redis

    async def keep(self, chain: str, locks: list[LockedEvent]) -> int:
        """Persist the locks not kept yet; returns how many were new to Redis."""
        new = [ev for ev in locks if (chain, ev.tx_hash, ev.log_index) not in self._kept]
        if not new:
            return 0
        added = int(await self.store.add_strays(chain, [ev.terms() for ev in new]))
        self._kept |= {(chain, ev.tx_hash, ev.log_index) for ev in new}
        return added

    def forget(self, chain: str, locks: list[LockedEvent]) -> None:
        for ev in locks:
            self._kept.discard((chain, ev.tx_hash, ev.log_index))


class Janitor:
    """Sweeps strays and late locks, prunes the index, archives finished trades."""

    def __init__(self, sides: list[ChainSide], settings: Settings, store: Store, strays: StrayBook,
                 spawn: Callable[[Any], Any]) -> None:
        self.sides = sides
        self.settings = settings
        self.store = store
        self.strays = strays
        self.spawn = spawn
        self.log = get_logger()
        self._announced: set[tuple[str, str]] = set()  # (trade id, stray terms hash) logged as refund due
        # chain -> swap id -> (lock, final state, when, how the lock ended) of the trades finished lately: what a
        # deep reorg may undo
        self.finished_locks: dict[str, OrderedDict[bytes, FinishedLock]] = {side.name: OrderedDict() for side in sides}
        # chain -> swap id -> (lock, the preimage its claim had revealed): claims a deep reorg took out, made again
        # until the slot no longer holds the lock or its timelock passed
        self.reclaims: dict[str, dict[bytes, tuple[LockedEvent, bytes]]] = {side.name: {} for side in sides}

    async def sweep(self, observed_at: float) -> list[Due]:
        """Every lock the relayer has seen under one of its trade ids ends claimed or refunded. Locks the protocol
        does not follow (strays) are kept in Redis; so are locks of a trade that had already finished (a
        counterparty that locked late, or re-locked a settled trade id). Once a stray's timelock has passed it
        is refunded as a watcher (permissionless, pays the sender back: always safe), and dropped once its slot
        no longer holds it. Returns the refunds due."""
        still_open = {bytes.fromhex(t[2:]) for t in await self.store.open_trades()}
        late: list[tuple[ChainSide, LockInstance]] = []
        for side in self.sides:
            late += [(side, i) for tid in side.index.locks if tid not in still_open
                     for i in side.index.instances(tid) if i.live]
        if late:
            finished = {rec.trade_id for rec in await self.store.get_many(
                sorted({"0x" + i.lock.trade_id.hex() for _, i in late})) if rec.state in TERMINAL}
            for side in self.sides:  # not ours (another firm's trade on a shared escrow): left alone
                kept = [i.lock for s, i in late if s is side and "0x" + i.lock.trade_id.hex() in finished]
                if await self.strays.keep(side.name, kept):
                    self.log.info("late_locks_kept", chain=side.name, locks=len(kept))
        due: list[Due] = []
        for side in self.sides:
            if side.fresh:
                due += await self._refunds_due(side, observed_at)
        return due

    async def _refunds_due(self, side: ChainSide, observed_at: float) -> list[Due]:
        """Refunds due for one chain's strays whose timelock its latest block has passed."""
        due = await self.store.due_strays(side.name, side.head_timestamp)
        if not due:
            return []
        locks = [LockedEvent.from_terms(t) for t in due]
        slots = await side.ledger.swap_slots([ev.swap_id for ev in locks])
        await self.store.drop_strays(side.name, [t for t, ev, slot in zip(due, locks, slots) if slot != ev.terms_hash])
        live = [ev for ev, slot in zip(locks, slots) if slot == ev.terms_hash]
        recs = {rec.trade_id: rec for rec in await self.store.get_many(sorted({"0x" + ev.trade_id.hex() for ev in live}))}
        st = side.role == "st"
        action = Action.REFUND_ST if st else Action.REFUND_SC
        out = []
        for ev in live:
            rec = recs.get("0x" + ev.trade_id.hex())
            if rec is None:
                continue
            out.append(Due(rec, action, None, ev if st else None, None if st else ev, observed_at, chain=side.name))
            key = (rec.trade_id, ev.terms_hash.hex())
            if key not in self._announced:
                self._announced.add(key)
                self.log.info("stray_lock_refund_due", trade_id=rec.trade_id, chain=side.name, sender=ev.sender)
        return out

    async def after_deep_reorg(self, side: ChainSide) -> None:
        """A reorg deeper than k may have taken out the refund or claim that finished a trade (beyond the
        guarantee; the follower alerted). Read the slots of the locks of trades finished lately on this chain;
        each live one gets back the end it had. A refund is made again (kept as a stray, refunded at its
        timelock: it pays the sender back). A claim is made again with the preimage it had revealed while its
        timelock allows (reclaims_due): left live, the lock would refund and take back what was paid for. A claim
        too late for that is an error alert for the operator."""
        kept = self.finished_locks.get(side.name)
        if not kept:
            return
        entries = list(kept.values())
        slots = await side.ledger.swap_slots([f.lock.swap_id for f in entries])
        refund: list[LockedEvent] = []
        for f, slot in zip(entries, slots):
            if slot != f.lock.terms_hash:
                continue
            lock = f.lock
            if isinstance(f.end, ClaimedEvent):
                late = lock.timelock <= side.now()
                if not late:
                    self.reclaims[side.name][lock.swap_id] = (lock, f.end.preimage)
                then = "past its timelock: not claimed again" if late else "claimed again"
            else:
                refund.append(lock)
                late, then = False, "refunded again at its timelock"
            (self.log.error if late else self.log.warning)(
                "finished_trade_lock_live_again", trade_id="0x" + lock.trade_id.hex(), chain=side.name,
                state=f.state.value, sender=lock.sender, timelock=lock.timelock, then=then)
        if refund and await self.strays.keep(side.name, refund):
            self.log.info("late_locks_kept", chain=side.name, locks=len(refund), after="deep reorg")

    async def reclaims_due(self, observed_at: float) -> list[Due]:
        """The claims a deep reorg took out, due again while their locks are live and their timelocks ahead (one
        slot read per chain that has any). A coin claim is made without the reveal gate while the trade's ST claim
        stands (its secret is public there, and the escrow no longer holds the ST the gate would look for); with
        the gate while the ST lock is live again too."""
        if not any(self.reclaims.values()):
            return []
        found: list[tuple[ChainSide, LockedEvent, bytes]] = []
        for side in self.sides:
            pending = self.reclaims[side.name]
            if not pending or not side.fresh:
                continue
            entries = list(pending.values())
            slots = await side.ledger.swap_slots([lock.swap_id for lock, _ in entries])
            for (lock, preimage), slot in zip(entries, slots):
                if slot != lock.terms_hash or lock.timelock <= side.head_timestamp:
                    del pending[lock.swap_id]  # claimed (by us or anyone) or refunded; or too late for a claim
                    if slot == lock.terms_hash:
                        self.log.error("reclaim_too_late", trade_id="0x" + lock.trade_id.hex(), chain=side.name,
                                       timelock=lock.timelock)
                    continue
                found.append((side, lock, preimage))
        live_st = {lock.trade_id for side in self.sides if side.role == "st"  # ST claims still to be made again
                   for lock, _ in self.reclaims[side.name].values()}
        recs = {rec.trade_id: rec for rec in await self.store.get_many(
            sorted({"0x" + lock.trade_id.hex() for _, lock, _ in found}))}
        out = []
        for side, lock, preimage in found:
            rec = recs.get("0x" + lock.trade_id.hex())
            if rec is None:
                continue
            st = side.role == "st"
            out.append(Due(rec, Action.CLAIM_ST if st else Action.CLAIM_SC, None, lock if st else None,
                           None if st else lock, observed_at, chain=side.name, preimage=preimage,
                           revealed=st or lock.trade_id not in live_st))
        return out

    async def prune_index(self) -> None:
        """Drop chain-index entries of trades that are no longer open (finished under another worker)."""
        open_ids = {bytes.fromhex(t[2:]) for t in await self.store.open_trades()}
        for side in self.sides:
            side.index.retain(open_ids | side.index.live_trade_ids())  # a live lock may still become a stray

    def finished(self, rec: TradeRecord) -> None:
        """A trade reached a terminal state: drop its index entries and traces, archive it a little later."""
        self._announced = {k for k in self._announced if k[0] != rec.trade_id}
        tid = rec.signed.instruction.trade_id_bytes
        now = time.monotonic()
        for side in self.sides:
            instances = side.index.instances(tid)
            locks = [i.lock for i in instances]
            kept = self.finished_locks.setdefault(side.name, OrderedDict())
            for i in instances:
                kept[i.lock.swap_id] = FinishedLock(i.lock, rec.state, now, i.end)
            horizon = now - FINISHED_LOCKS_BLOCKS * side.block_time
            while kept and (len(kept) > FINISHED_LOCKS_KEPT or next(iter(kept.values())).at < horizon):
                kept.popitem(last=False)
            self.strays.forget(side.name, locks)
            side.index.forget(tid)
        self._archive_later(rec.trade_id)

    def _archive_later(self, trade_id: str) -> None:
        """Compact a finished trade once the audit entries of its last transactions are written."""
        async def later() -> None:
            await asyncio.sleep(max(2.0, 2 * max(s.block_time for s in self.sides)))
            for _ in range(3):
                try:
                    if await self.store.archive(trade_id):
                        return
                except RedisError:
                    pass
                await asyncio.sleep(1.0)

        self.spawn(later())
