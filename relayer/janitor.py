"""What keeps the escrow and the worker clean: every lock seen under one of our trade ids ends claimed or
refunded (strays kept in Redis and refunded at their timelock), finished trades are archived, and the chain
index and in-memory traces of finished trades are dropped so memory stays flat."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from adapters.htlc import LockedEvent
from relayer.actions import Due
from relayer.config import Settings
from relayer.follow import ChainSide, LockInstance
from relayer.logging import get_logger
from relayer.protocol.rules import Action
from relayer.protocol.states import TERMINAL
from relayer.restore import FinishedLocks
from relayer.store import Store, TradeRecord
from relayer.strays import StrayBook

__all__ = ["SWEEP_EVERY", "Janitor", "StrayBook"]

SWEEP_EVERY = 2.0  # seconds between looks for late locks and strays whose timelock passed


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
        self.restore = FinishedLocks(sides, store, strays)  # what a reorg deeper than k took out, put back

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
                kept = [i.lock for s, i in late if s is side and "0x" + i.lock.trade_id.hex() in finished
                        and not self.restore.claimed(side, i.lock)]  # a claim a deep reorg took out: made again
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
        """A reorg deeper than k may have taken out the refund or claim that finished a trade: see restore.py."""
        await self.restore.after_deep_reorg(side)

    async def reclaims_due(self, observed_at: float) -> list[Due]:
        """The claims a deep reorg took out, due again this round (restore.py)."""
        return await self.restore.reclaims_due(observed_at)

    async def prune_index(self) -> None:
        """Drop chain-index entries of trades that are no longer open (finished under another worker)."""
        open_ids = {bytes.fromhex(t[2:]) for t in await self.store.open_trades()}
        for side in self.sides:
            side.index.retain(open_ids | side.index.live_trade_ids())  # a live lock may still become a stray

    def finished(self, rec: TradeRecord) -> None:
        """A trade reached a terminal state: drop its index entries and traces, archive it a little later."""
        self._announced = {k for k in self._announced if k[0] != rec.trade_id}
        tid = rec.signed.instruction.trade_id_bytes
        for side in self.sides:
            instances = side.index.instances(tid)
            locks = [i.lock for i in instances]
            self.restore.keep(side, instances, rec.state)
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
