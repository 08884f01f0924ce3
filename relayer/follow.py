"""Following the chains: what one chain's escrow has shown so far (k-confirmed), and the loop that reads it.

A swap id (sender, tradeId) can be locked again once its swap was claimed or refunded, so "is this swap id
claimed?" is not a question about a lock. The index keeps every Locked event of a trade and every Claimed /
Refunded event of a swap id in chain order, and pairs them: each Claimed/Refunded ends the latest lock of its
swap id before it (the escrow allows one live lock per swap id). A reorg rewind drops the events above a
height; the pairing is recomputed from what is left, so the order events arrive in never matters.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError

from adapters.errors import LedgerError
from adapters.htlc import ClaimedEvent, EscrowEvent, EscrowFollower, FollowResult, HtlcLedger, LockedEvent, RefundedEvent, SettledEvent
from relayer import metrics
from relayer.config import LedgerConfig, Settings
from relayer.errors import ConfigError
from relayer.logging import get_logger
from relayer.protocol.rules import LegView, ObservedLock
from relayer.store import Store, refuses_writes



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
        self.trade_of: dict[bytes, bytes] = {}  # swap id -> trade id, for the locks held here
        self.by_hashlock: dict[bytes, set[bytes]] = defaultdict(set)  # hashlock -> trade ids, for the locks here

    def learn_preimages(self, preimages: list[bytes]) -> list[bytes]:
        """Remember secrets seen in claims not yet k deep; returns the hashlocks that are new."""
        new = []
        for p in preimages:
            h = hashlib.sha256(p).digest()
            if h not in self.preimages:
                new.append(h)
            self.preimages[h] = p
        return new

    def trades_with_hashlock(self, hashlock: bytes) -> set[bytes]:
        return set(self.by_hashlock.get(hashlock, ()))

    def apply(self, events: list[EscrowEvent]) -> set[bytes]:
        """Add newly confirmed events (the follower delivers them in chain order); returns the trade ids they
        touch (an end of a swap whose lock is not held here touches none: it is not one of our trades)."""
        touched = set()
        for ev in events:
            if isinstance(ev, LockedEvent):
                self.locks[ev.trade_id].append(ev)
                self.trade_of[ev.swap_id] = ev.trade_id
                self.by_hashlock[ev.hashlock].add(ev.trade_id)
                touched.add(ev.trade_id)
            elif isinstance(ev, SettledEvent):
                self.settlements[ev.trade_id].append(ev)
                touched.add(ev.trade_id)
            else:
                self.ends[ev.swap_id].append(ev)
                if ev.swap_id in self.trade_of:
                    touched.add(self.trade_of[ev.swap_id])
        return touched

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
        self._reindex()

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
        self._reindex()

    def _reindex(self) -> None:
        self.trade_of = {e.swap_id: t for t, evs in self.locks.items() for e in evs}
        self.by_hashlock = defaultdict(set)
        for t, evs in self.locks.items():
            for e in evs:
                self.by_hashlock[e.hashlock].add(t)

    def forget(self, trade_id: bytes) -> None:
        """Drop a finished trade's events, except its locks still live: a lock the follower delivered while the
        trade was being finished (mined just before its timelock, shown k blocks later) must reach the janitor's
        late-lock sweep and be refunded, not vanish here (chaos: a STUCK lock of an ABORTED trade)."""
        live = [i.lock for i in self.instances(trade_id) if i.live]
        for ev in self.locks.pop(trade_id, []):
            self.preimages.pop(ev.hashlock, None)
            self.ends.pop(ev.swap_id, None)
            self.trade_of.pop(ev.swap_id, None)
            held = self.by_hashlock.get(ev.hashlock)
            if held is not None:
                held.discard(trade_id)
                if not held:
                    del self.by_hashlock[ev.hashlock]
        self.settlements.pop(trade_id, None)
        if live:
            self.apply(list[EscrowEvent](live))


def _position(ev: LockedEvent | ClaimedEvent | RefundedEvent) -> tuple[int, int]:
    return (ev.block, ev.log_index)


STALL_BLOCKS = 5  # block times without a new head after which the other endpoints are asked for theirs


@dataclass
class ChainSide:
    """One ledger as the engine follows it: adapter, follower, confirmed index, head and freshness."""

    name: str  # the ledger's name ("st" and "sc" without a config file)
    ledger: HtlcLedger
    config: LedgerConfig
    follower: EscrowFollower | None = None
    index: ChainIndex = field(default_factory=ChainIndex)
    head: int = -1
    head_timestamp: int = 0
    head_seen_at: float = 0.0  # wall time when the current head was first seen
    reconnects_seen: int = 0  # EvmChain.reconnects when last looked at
    fresh: bool = False  # followed successfully this round
    gas_limit: int = 0  # the latest block's gas limit (0 until seen)
    reviving: asyncio.Task[None] | None = None  # the running check for our reorged-out transactions
    stall_checked_at: float = 0.0  # monotonic time the endpoints' heads were last compared (a stalled head)
    reread_at: float = 0.0  # monotonic time of the last re-read asked for (a lock the node gave no event for)
    withheld_reported: int | None = None  # the last block reported as left out of an eth_getLogs answer
    following: asyncio.Task[bool] | None = None  # this chain's follow (it may outlast a round, see Followers)

    @property
    def role(self) -> str:
        """"st" (a security-token platform) or "sc" (a coin ledger)."""
        return self.config.role

    @property
    def chain_id(self) -> int | None:
        """The configured chain id (trades are routed by it even while its RPC is down or serves another chain),
        else the one the RPC serves once it answered."""
        return self.config.chain_id or self.ledger.chain.chain_id

    @property
    def confirmations(self) -> int:
        """k of this chain (build_engine fills in DVP_CONFIRMATIONS where the config leaves it unset)."""
        return self.config.confirmations or 1

    @property
    def block_time(self) -> float:
        return self.config.block_time or 1.0

    def now(self) -> int:
        """The chain's clock projected to this moment: head timestamp + wall time since we saw the head.

        A chain that makes blocks only on demand (or stalls) keeps an old head timestamp; projecting keeps
        "time left on a timelock" honest and the two chains' clocks comparable.
        """
        return int(self.head_timestamp + max(0.0, time.time() - self.head_seen_at))


FOLLOW_BUDGET = 1.5  # seconds a round waits for a chain's follow before deciding without it


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """A follow that outlived its round may fail later: its error was logged by it or is retried next round."""
    if not task.cancelled():
        task.exception()


class Followers:
    """The follow loop of every chain: k-confirmed events into each side's index, reorg rewinds, cursors in
    Redis, and the re-broadcasts a new block or a reconnect calls for."""

    def __init__(self, sides: list[ChainSide], settings: Settings, store: Store, spawn: Callable[[Any], Any]) -> None:
        self.sides = sides
        self.settings = settings
        self.store = store
        self.spawn = spawn  # runs a coroutine in the background, tracked by the engine (drained on stop)
        self.log = get_logger()
        self.touched: set[bytes] = set()  # trade ids whose events changed since the engine last took them
        # since the engine last looked, a reorg rewound an index or a chain's clock jumped ahead of the wall
        # clock (timers set from it are off): every trade may differ
        self.rewound = False
        self.misconfigured: set[str] = set()  # ledgers whose RPC serves another chain than configured
        self.deep_reorged: set[str] = set()  # ledgers a reorg deeper than k rewound since the engine last looked
        self._exported: dict[tuple[int, str], int] = {}  # (metric, chain): how much of the chain's count it has
        self._follow_started: dict[str, float] = {}  # ledger -> monotonic time its running follow started
        self._last_took: dict[str, float] = {}  # ledger -> seconds its last follow took (inf: failed or hung)

    async def start_side(self, side: ChainSide) -> None:
        """Connect to one chain and place its follower where no open trade's events can be missed."""
        expected = side.config.chain_id
        chain_id = await side.ledger.chain.connect()
        if expected is not None and chain_id != expected:
            where = f"DVP_{side.name.upper()}_CHAIN_ID" if side.name in ("st", "sc") else f"chain_id of ledger {side.name}"
            raise ConfigError(f"{side.name} RPC {side.ledger.chain.active_url} serves chain {chain_id}, "
                              f"not the configured {where}={expected}")
        height, bhash = side.config.start_block - 1, None
        cursor = await self.store.get_cursor(side.name)
        if cursor and cursor[2] not in (None, chain_id):  # this ledger's name was used for another chain
            self.log.warning("cursor_of_another_chain", chain=side.name, cursor_chain_id=cursor[2],
                             chain_id=chain_id, start_block=side.config.start_block)
        elif cursor:
            height, bhash = cursor[0], cursor[1]
            side.ledger.chain.saw_head(height)  # a standby below what was read before is not faster, it lags
        oldest = await self._oldest_open_block(side, chain_id)
        if oldest is not None and oldest - 1 < height:
            height, bhash = oldest - 1, None
        side.follower = side.ledger.follower(
            confirmations=side.confirmations, start_height=max(height, -1), start_hash=bhash, dvp=side.ledger.dvp,
            finalized_tag=side.config.finality == "finalized",
        )
        side.follower.withheld_patience = STALL_BLOCKS * side.block_time

    async def _oldest_open_block(self, side: ChainSide, chain_id: int) -> int | None:
        """The first block an open trade on this ledger needs read again (kept per leg: st_ / sc_from_block)."""
        oldest = None
        for rec in await self.store.get_many(await self.store.open_trades()):
            ins = rec.signed.instruction
            if (ins.stChainId if side.role == "st" else ins.scChainId) != chain_id:
                continue  # a trade on another ledger of this role
            b = rec.get_int(f"{side.role}_from_block")
            if b is not None and (oldest is None or b < oldest):
                oldest = b
        return oldest

    async def follow_all(self) -> list[bool]:
        """Follow every chain at once, but never let a node that hangs (no answer until the request timeout,
        e.g. while it writes its state on shutdown) hold up the decisions for the others: after FOLLOW_BUDGET
        the round goes on with that chain stale, and its follow finishes in the background (it is not
        cancelled, so the follower's cursor and the index stay consistent)."""
        tasks, waited = [], []
        now = time.monotonic()
        for side in self.sides:
            if side.following is None or side.following.done():
                side.following = asyncio.create_task(self._follow_or_mark(side))
                side.following.add_done_callback(_consume_exception)
                side.following.add_done_callback(functools.partial(self._took, side.name, now))
                self._follow_started[side.name] = now
                waited.append(side.following)
            elif self._last_took.get(side.name, float("inf")) < 2 * FOLLOW_BUDGET and \
                    now < self._follow_started[side.name] + 2 * FOLLOW_BUDGET:
                # slow, not hung (its last follow answered within 2 x FOLLOW_BUDGET): waited for into this
                # round, else a chain a little over the budget is never fresh when the trades are decided
                waited.append(side.following)
            tasks.append(side.following)
        # a follow hanging from an earlier round already cost that round its budget: every round would
        # otherwise wait FOLLOW_BUDGET for a hung chain, and the trades on the others go at that pace
        if waited:
            await asyncio.wait(waited, timeout=FOLLOW_BUDGET)
        done = [task for task in tasks if task.done()]
        pending = [task for task in tasks if not task.done()]
        for task in done:
            task.result()  # a Redis error while saving a cursor fails the round
        for side in self.sides:
            if side.following in pending:
                if side.fresh:
                    self.log.warning("chain_slow", chain=side.name, budget_s=FOLLOW_BUDGET)
                side.fresh = False
        return [side.fresh for side in self.sides]

    def _took(self, name: str, started_at: float, task: asyncio.Task[bool]) -> None:
        ok = not task.cancelled() and task.exception() is None and task.result()
        self._last_took[name] = time.monotonic() - started_at if ok else float("inf")

    def take_changes(self) -> tuple[set[str], bool]:
        """The trade ids (0x-hex) whose chain view changed since the last call, and whether every trade may have
        (a reorg rewound, a chain clock jumped)."""
        touched, rewound = {"0x" + t.hex() for t in self.touched}, self.rewound
        self.touched, self.rewound = set(), False
        return touched, rewound

    def pending(self) -> list[asyncio.Task[bool]]:
        return [s.following for s in self.sides if s.following is not None and not s.following.done()]

    async def _follow_or_mark(self, side: ChainSide) -> bool:
        """Follow one chain; a chain that does not answer is marked stale for this round (decide() then does
        nothing that needs it) instead of stopping the work on the other chain."""
        try:
            if side.follower is None:
                await self.start_side(side)
            await self._follow(side)
            side.fresh = True
            self.misconfigured.discard(side.name)
        except (LedgerError, OSError) as exc:
            if side.fresh:
                self.log.warning("chain_stale", chain=side.name, error=str(exc), error_type=type(exc).__name__)
            side.fresh = False
        except ConfigError as exc:  # e.g. it came up serving another chain id: this ledger only is left out
            if side.name not in self.misconfigured:  # logged once, until it is right again
                self.misconfigured.add(side.name)
                self.log.error("chain_misconfigured", chain=side.name, error=str(exc))
            side.fresh = False
        return side.fresh

    async def _follow(self, side: ChainSide) -> None:
        assert side.follower is not None
        before, before_height = side.follower.last_head, side.follower.height
        res = await side.follower.poll()
        if res.rewound_to is not None:
            side.index.rewind(res.rewound_to)
            self.rewound = True  # every trade is decided again from the new chain
            self.deep_reorged.add(side.name)  # and the trades finished lately are looked at again (janitor)
            # the blocks it replaced were k deep: processed as final. Beyond the guarantee: an alert, with its depth
            metrics.DEEP_REORGS.labels(side.name).inc()
            self.log.error("reorg_beyond_confirmations", chain=side.name, to_height=res.rewound_to,
                           processed_to=before_height, depth_at_least=max(0, before_height - res.rewound_to),
                           confirmations=side.confirmations)
        if res.withheld is not None:
            self._report_withheld(side, res)
        if res.missing_passed:  # a hole in the node's history: the escrow's slots still decide (driver, janitor)
            metrics.BLOCKS_MISSING.labels(side.name).inc(len(res.missing))
            self.log.error("rpc_blocks_missing", chain=side.name, blocks=res.missing,
                           endpoint=side.ledger.chain.active_url, read_past=True)
        self.touched |= side.index.apply(res.events)
        for h in side.index.learn_preimages(res.preimages):  # the secret of a lock on either chain
            for s in self.sides:
                self.touched |= s.index.trades_with_hashlock(h)
        height, bhash = side.follower.cursor
        metrics.FOLLOWER_LAG.labels(side.name).set(max(0, res.head - height))
        metrics.FOLLOWER_HEIGHT.labels(side.name).set(height)
        self._export(metrics.RPC_ERRORS, side.name, side.ledger.chain.rpc_errors)
        self._export(metrics.RPC_ENDPOINT_SLOW, side.name, side.ledger.chain.slow_switches)
        metrics.FEE_CEILING_HITS.labels(side.name).set(sum(s.fee_ceiling_hits for s in side.ledger.all_senders.values()))
        if bhash and side.ledger.chain.chain_id is not None:
            try:
                await self.store.set_cursor(side.name, height, bhash, side.ledger.chain.chain_id)
            except RedisError as exc:
                if not refuses_writes(exc):
                    raise
                # Redis refuses writes: the index goes on in memory, the cursor is written with a later block (a
                # restart before that replays from the one written last: more replay, nothing missed)
        side.ledger.chain.saw_head(res.head)
        side.gas_limit = res.head_gas_limit or side.gas_limit
        if res.head != side.head:
            if side.head_seen_at and res.head_timestamp > side.now() + 2 * side.block_time + 1:
                self.rewound = True  # e.g. a chain that stalled, then stamped its next block far ahead
            side.head, side.head_timestamp, side.head_seen_at = res.head, res.head_timestamp, time.time()
        if res.head != before:
            side.ledger.notify_new_block()
            if side.reviving is None or side.reviving.done():
                side.reviving = self.spawn(self._revive(side))
        if side.ledger.chain.reconnects != side.reconnects_seen:
            side.reconnects_seen = side.ledger.chain.reconnects
            self.spawn(self._heal(side))
        await self._leave_a_stalled_endpoint(side)

    def _export(self, metric: Counter, chain: str, seen: int) -> None:
        """The chain object counts; the metric is a Counter (rate() in alert rules): add what it has not yet."""
        key = (id(metric), chain)
        metric.labels(chain).inc(max(0, seen - self._exported.get(key, 0)))
        self._exported[key] = seen

    def _report_withheld(self, side: ChainSide, res: FollowResult) -> None:
        """A node's eth_getLogs answer left out a log its own block header shows (adapters/log_bloom.py): the
        follower did not read past that block unless every endpoint says the same. Counted and logged once per
        block, with the endpoint it reads from now."""
        if res.withheld_believed:
            self.log.warning("rpc_logs_bloom_unconfirmed", chain=side.name, block=res.withheld,
                             endpoint=res.withheld_by)
        elif side.withheld_reported != res.withheld or res.now_using:
            if side.withheld_reported != res.withheld:
                metrics.LOGS_WITHHELD.labels(side.name).inc()
            self.log.warning("rpc_logs_withheld", chain=side.name, block=res.withheld, left=res.withheld_by,
                             now_using=res.now_using or res.withheld_by)
        side.withheld_reported = res.withheld

    def reread(self, name: str, from_block: int, force: bool = False) -> None:
        """Read a ledger again from `from_block`, from its next endpoint when it has standbys: its current one gave
        no event for a lock the escrow holds (a node dropping logs). At most once per STALL_BLOCKS block times,
        unless `force` (an operator's re-drive)."""
        side = next((s for s in self.sides if s.name == name), None)
        if side is None or side.follower is None or (
                not force and time.monotonic() - side.reread_at < STALL_BLOCKS * side.block_time):
            return
        side.reread_at = time.monotonic()
        chain = side.ledger.chain
        if len(chain.rpc_urls) > 1:
            chain.use((chain.active_index + 1) % len(chain.rpc_urls))
        target = max(-1, from_block - 1)
        if target < side.follower.height:
            side.follower.rewind_to(target)
            side.index.rewind(target)
            self.rewound = True
        self.log.warning("chain_reread", chain=name, from_block=from_block, now_using=chain.active_url)

    async def _leave_a_stalled_endpoint(self, side: ChainSide) -> None:
        """An endpoint can answer and still lie: its head stops while the chain goes on (out of sync, stuck on a
        fork). When the head has not moved for STALL_BLOCKS block times, ask every endpoint for its head; one that
        is ahead becomes the active endpoint, with an alert. Both stuck: a chain that stopped (nothing to do)."""
        chain = side.ledger.chain
        now = time.monotonic()
        patience = STALL_BLOCKS * side.block_time
        if len(chain.rpc_urls) < 2 or not side.head_seen_at or time.time() - side.head_seen_at < patience \
                or now - side.stall_checked_at < patience:
            return
        side.stall_checked_at = now
        heads = [-1 if h is None else h for h in await chain.heads()]
        best = max(range(len(heads)), key=heads.__getitem__)
        ahead = heads[best]
        if best == chain.active_index or ahead <= side.head + 1:
            return
        stalled_url = chain.active_url
        chain.use(best)
        metrics.RPC_HEAD_STALLS.labels(side.name).inc()
        self.log.warning("rpc_head_stalled", chain=side.name, head=side.head, other_head=ahead,
                         stalled_seconds=round(time.time() - side.head_seen_at, 1), left=stalled_url,
                         now_using=chain.active_url)

    async def _revive(self, side: ChainSide) -> None:
        """After each new block: re-send any transaction of ours that a reorg within k took out of the chain."""
        for sender in list(side.ledger.senders.values()):
            try:
                revived = await sender.revive_reorged(side.confirmations + 1)
            except LedgerError:
                return  # the chain went away: the next block retries
            if revived:
                self.log.warning("rebroadcast_after_reorg", chain=side.name, account=sender.address,
                                 transactions=revived)

    async def _heal(self, side: ChainSide) -> None:
        """The node was unreachable and answers again: it may have restarted with an empty mempool, so
        re-broadcast every unmined transaction of ours at once (same signed bytes, no nonce gaps)."""
        for sender in list(side.ledger.senders.values()):
            try:
                filled = await sender.heal_gaps()
            except LedgerError as exc:
                self.log.warning("heal_failed", chain=side.name, account=sender.address, error=str(exc))
                continue
            if filled:
                self.log.warning("rebroadcast_after_reconnect", chain=side.name, account=sender.address,
                                 transactions=filled)
