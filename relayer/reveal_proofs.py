"""Our own reveal, proven from the coin ledger directly when its follower lags (defect 14).

A relayer holding the seller's key claims the SC (the reveal) and then claims the ST once that claim is k blocks
deep — in the follower. A follower on a slow path (large log responses delayed chunk by chunk) may show the claim
only after T_st, and the ST would be refunded although the SC was claimed. The relayer has a stronger fact than
its follower: the escrow's slot. Read directly at the newest block k deep (or finalized), an empty slot for a lock
the follower saw at or below that block, in a block stamped before T_sc, can only be a claim (a refund needs a
block at or after T_sc), and a claim publishes the secret: the ST claim may follow.

When the follower lags so far that it shows neither the buyer's lock nor its claim (a worker restarted behind a
slow path reads every event since its cursor in one large answer), the relayer asks the coin ledger for Claimed
events of the buyer's swap id alone: k deep, one whose preimage hashes to our hashlock is our own reveal (nobody
else has the secret); for a buyer-side relayer any claim that shows the ST lock's secret serves at once, as a
secret seen above the confirmed range does.

The reads run in the background, one batch per ledger at a time, so a slow ledger never holds up a round; a
trade's answer is used in the round after it arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from adapters.errors import LedgerError
from adapters.htlc import LockedEvent
from relayer.follow import ChainSide
from relayer.logging import get_logger

CHECK_TIMEOUT = 10.0  # seconds one batch of reads may take before it is dropped (asked again next round)
REVEALS_KEPT = 50_000  # answers kept at most (oldest dropped): memory stays flat whatever forget() misses


@dataclass(frozen=True)
class _Asked:
    side: ChainSide
    lock: LockedEvent  # the buyer's SC lock our claim consumes


@dataclass(frozen=True)
class _ClaimAsked:
    side: ChainSide
    swap_id: bytes  # the buyer's swap under the trade id
    hashlock: bytes  # the ST lock's: a claim whose preimage hashes to it revealed the secret
    from_block: int
    confirmations: int  # k for our own reveal (the seller waits for it to be final); 1 for a buyer (any claim)


class RevealProofs:
    """Which of our SC claims (reveals) the coin ledger shows k deep, read apart from the follower."""

    def __init__(self) -> None:
        self._asked: dict[str, _Asked] = {}  # trade id -> the lock to check (replaced on each ask)
        # trade id -> (swap id, terms hash) of the lock found ended, and the confirmed block that showed its slot empty
        self._proven: dict[str, tuple[tuple[bytes, bytes], int]] = {}
        self._claims_asked: dict[str, _ClaimAsked] = {}
        # trade id -> (hashlock, depth asked, block read up to, preimage)
        self._claims_proven: dict[str, tuple[bytes, int, int, bytes]] = {}
        self._checking: dict[str, asyncio.Task[None]] = {}  # ledger name -> its running batch
        # decide a trade again after its answer: (trade id, seconds from now) - at once when proven, else a block on
        self.wake: Callable[[str, float], None] = lambda trade_id, after: None
        self.log = get_logger()

    def proven(self, trade_id: str, lock: LockedEvent) -> int | None:
        """The confirmed block at which `lock` (this trade's SC lock our reveal consumes) was seen ended, if it was;
        an answer about another lock of the trade (a re-lock) does not count."""
        found = self._proven.get(trade_id)
        return found[1] if found is not None and found[0] == (lock.swap_id, lock.terms_hash) else None

    def ask(self, trade_id: str, side: ChainSide, lock: LockedEvent) -> None:
        """Check (soon, in the background) whether `lock` is claimed at k depth on `side`."""
        if self.proven(trade_id, lock) is not None:
            return
        self._asked[trade_id] = _Asked(side, lock)
        self._start(side)

    def claim_proven(self, trade_id: str, hashlock: bytes, confirmations: int) -> tuple[int, bytes] | None:
        """(block read up to, preimage) of a claim of the buyer's swap, at least `confirmations` deep, that revealed
        the secret of `hashlock`, if one was found."""
        found = self._claims_proven.get(trade_id)
        if found is None or found[0] != hashlock or found[1] < confirmations:
            return None
        return found[2], found[3]

    def ask_claim(self, trade_id: str, side: ChainSide, swap_id: bytes, hashlock: bytes, from_block: int,
                  confirmations: int) -> None:
        """Look (soon, in the background) for a claim of `swap_id` on `side`, `confirmations` deep, that revealed
        the secret of `hashlock`."""
        if self.claim_proven(trade_id, hashlock, confirmations) is not None:
            return
        self._claims_asked[trade_id] = _ClaimAsked(side, swap_id, hashlock, from_block, confirmations)
        self._start(side)

    def _start(self, side: ChainSide) -> None:
        running = self._checking.get(side.name)
        if running is None or running.done():
            self._checking[side.name] = asyncio.create_task(self._check(side))

    def forget(self, trade_id: str) -> None:
        self._asked.pop(trade_id, None)
        self._proven.pop(trade_id, None)
        self._claims_asked.pop(trade_id, None)
        self._claims_proven.pop(trade_id, None)

    def pending(self) -> list[asyncio.Task[None]]:
        return [t for t in self._checking.values() if not t.done()]

    async def settle(self) -> None:
        """Wait for the running reads (tests)."""
        await asyncio.gather(*self._checking.values(), return_exceptions=True)

    async def _check(self, side: ChainSide) -> None:
        await self._check_slots(side)
        await self._check_claims(side)

    async def _check_claims(self, side: ChainSide) -> None:
        for depth in sorted({a.confirmations for a in self._claims_asked.values() if a.side is side}):
            await self._check_claims_at(side, depth)

    async def _check_claims_at(self, side: ChainSide, depth: int) -> None:
        asked = {tid: a for tid, a in self._claims_asked.items() if a.side is side and a.confirmations == depth}
        for tid in asked:
            self._claims_asked.pop(tid, None)
        if not asked:
            return
        try:
            seen = await asyncio.wait_for(
                side.ledger.claims_at_depth(sorted({a.swap_id for a in asked.values()}),
                                            min(a.from_block for a in asked.values()), depth,
                                            finalized=depth > 1 and side.config.finality == "finalized"),
                CHECK_TIMEOUT)
        except (LedgerError, TimeoutError) as exc:
            self.log.info("reveal_proof_unanswered", chain=side.name, trades=len(asked), error=type(exc).__name__)
            return
        except Exception as exc:  # noqa: BLE001 - a malformed answer: nothing proven, asked again next round
            self.log.warning("reveal_proof_failed", chain=side.name, trades=len(asked), error=repr(exc)[:200])
            return
        if seen is None:
            return
        for tid, a in asked.items():
            preimage = seen.preimages.get(a.swap_id)
            if preimage is not None and hashlib.sha256(preimage).digest() == a.hashlock:
                self._claims_proven[tid] = (a.hashlock, depth, seen.block, preimage)
                while len(self._claims_proven) > REVEALS_KEPT:
                    del self._claims_proven[next(iter(self._claims_proven))]
                self.wake(tid, 0.0)
            else:
                self.wake(tid, side.block_time)

    async def _check_slots(self, side: ChainSide) -> None:
        asked = {tid: a.lock for tid, a in self._asked.items() if a.side is side}
        for tid in asked:
            self._asked.pop(tid, None)
        if not asked:
            return
        locks = list(asked.values())
        try:
            seen = await asyncio.wait_for(
                side.ledger.slots_at_depth([lock.swap_id for lock in locks], side.confirmations,
                                           finalized=side.config.finality == "finalized"),
                CHECK_TIMEOUT)
        except (LedgerError, TimeoutError) as exc:
            self.log.info("reveal_proof_unanswered", chain=side.name, trades=len(asked), error=type(exc).__name__)
            return  # asked again next round
        except Exception as exc:  # noqa: BLE001 - a malformed answer: nothing proven, asked again next round
            self.log.warning("reveal_proof_failed", chain=side.name, trades=len(asked), error=repr(exc)[:200])
            return
        if seen is None:
            return
        for (tid, lock), slot in zip(asked.items(), seen.slots):
            if seen.block >= lock.block and seen.timestamp < lock.timelock and slot != lock.terms_hash:
                self._proven[tid] = ((lock.swap_id, lock.terms_hash), seen.block)
                while len(self._proven) > REVEALS_KEPT:
                    del self._proven[next(iter(self._proven))]
                self.wake(tid, 0.0)
            else:
                self.wake(tid, side.block_time)
