"""Locks the protocol does not follow under one of our trade ids (a counterparty's late lock, a re-lock of a
finished trade id, a foreign lock), persisted so that their refund at the timelock survives a restart."""

from __future__ import annotations

from adapters.htlc import LockedEvent
from relayer.store import Store


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
