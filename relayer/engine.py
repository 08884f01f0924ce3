"""The engine: the only module that joins the protocol rules, the Redis store and the ledger adapters.

Each round it (1) advances both chains' followers (k-confirmed events, reorg rewinds), (2) for every open
trade rebuilds a view of both legs from those events and asks `protocol.rules.decide()` what the state is
and what is due, (3) persists state changes (compare-and-set, audited) and starts the due actions, each
checked against the chain right before sending. Intent is written before side effects: the secret (sealed),
its hashlock and T_st are in Redis before the ST lock is broadcast. A restart re-reads every open trade and
re-derives everything from the chains, so a crash at any line resumes correctly.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from adapters.contracts import encode_call, swap_id
from adapters.errors import LedgerError, LeaseLost, RpcUnavailable, TransactionReverted
from adapters.evm import HeadWatcher, TxSender
from adapters.htlc import (
    ATOMIC_DVP,
    ESCROW,
    ESCROW_BATCH_FN,
    ESCROW_FN,
    EscrowFollower,
    HtlcLedger,
    LockedEvent,
)
from relayer.config import Settings
from relayer.follow import ChainIndex, LockInstance
from relayer.errors import ConcurrentUpdate, ConfigError, FencedOut, InvalidInstruction, NotReady
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from relayer import metrics
from relayer.leases import ACTOR, WORKER_TOKEN, holder_is_dead
from relayer.logging import get_logger
from relayer.protocol.instruction import SignedInstruction, TradeInstruction
from relayer.protocol.rules import (
    Action,
    AtomicView,
    Decision,
    LegView,
    Roles,
    TimingPolicy,
    TradeView,
    check_sc_lock,
    check_st_lock,
    choose_lock,
    decide,
    decide_atomic,
    sc_timelock_for,
)
from relayer.protocol.states import TERMINAL, TradeState, can_transition
from relayer.secrets import SecretBox
from relayer.store import Store, TradeRecord



def dvp_terms(ins: TradeInstruction) -> tuple[Any, ...]:
    """AtomicDvP terms of a same-ledger trade: (tradeId, seller, buyer, stToken, stAmount, scToken, scAmount,
    deadline)."""
    return (ins.trade_id_bytes, ins.sellerStAccount, ins.buyerScAccount, ins.stToken, ins.stAmount, ins.scToken,
            ins.scAmount, ins.deadline)


FOLLOW_BUDGET = 1.5  # seconds a round waits for a chain's follow before deciding without it


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """A follow that outlived its round may fail later: its error was logged by it or is retried next round."""
    if not task.cancelled():
        task.exception()


class NeedsAccount(Exception):
    """An action needs the signature of an account whose lease another worker holds: route it there."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.account = account


@dataclass
class Due:
    """One action decide() found due for one trade this round."""

    rec: TradeRecord
    action: Action
    view: TradeView | None  # None for actions that need no view of the legs (same-ledger settle, stray refunds)
    st_ev: LockedEvent | None
    sc_ev: LockedEvent | None
    observed_at: float = 0.0  # monotonic time the round finished reading both chains

    @property
    def lock(self) -> LockedEvent | None:
        """The lock a claim or refund acts on (None for locks and settlements)."""
        if self.action in (Action.CLAIM_SC, Action.REFUND_SC):
            return self.sc_ev
        if self.action in (Action.CLAIM_ST, Action.REFUND_ST):
            return self.st_ev
        return None

    @property
    def key(self) -> tuple[str, Action, bytes]:
        """One in-flight action per trade, kind and lock: a trade's stray locks are refunded beside its own legs."""
        lock = self.lock
        return (self.rec.trade_id, self.action, lock.terms_hash if lock is not None else b"")


@dataclass
class Prepared:
    """A due action checked against the chain and ready to encode, alone or in a batch."""

    due: Due
    ledger: HtlcLedger
    via: TxSender
    single: str  # calldata of the single-swap call
    entry: tuple[Any, ...]  # the swap's entry in the batch call
    sort_key: tuple[str, ...] = ()
    expires: int | None = None  # the chain time after which the call cannot succeed (a timelock, a deadline)
    to: str = ""  # contract called (the escrow unless set)

    @property
    def target(self) -> str:
        return self.to or self.ledger.escrow


_BATCH_FN = {kind: (ESCROW, fn) for kind, fn in ESCROW_BATCH_FN.items()} | {"settle": (ATOMIC_DVP, "settleBatch")}
# Gas limits for single-swap calls (worst case measured: fresh storage on both balances, allowlisted token,
# ~95k for a lock), with headroom; only gasUsed is paid. Batches are estimated (see _act).
_SINGLE_GAS = {"lock": 180_000, "claim": 130_000, "refund": 130_000, "settle": 250_000}


@dataclass
class ChainSide:
    name: str  # "st" | "sc"
    ledger: HtlcLedger
    follower: EscrowFollower | None = None
    index: ChainIndex = field(default_factory=ChainIndex)
    head: int = -1
    head_timestamp: int = 0
    head_seen_at: float = 0.0  # wall time when the current head was first seen
    reconnects_seen: int = 0  # EvmChain.reconnects when last looked at
    fresh: bool = False  # followed successfully this round
    reviving: asyncio.Task[None] | None = None  # the running check for our reorged-out transactions
    following: asyncio.Task[bool] | None = None  # this chain's follow (it may outlast a round: _follow_sides)

    def now(self) -> int:
        """The chain's clock projected to this moment: head timestamp + wall time since we saw the head.

        A chain that makes blocks only on demand (or stalls) keeps an old head timestamp; projecting keeps
        "time left on a timelock" honest and the two chains' clocks comparable.
        """
        return int(self.head_timestamp + max(0.0, time.time() - self.head_seen_at))


class Engine:
    """Drives every open trade to SETTLED or ABORTED."""

    def __init__(self, settings: Settings, store: Store, st: HtlcLedger, sc: HtlcLedger, box: SecretBox) -> None:
        self.settings = settings
        self.store = store
        self.st = ChainSide("st", st)
        self.sc = ChainSide("sc", sc)
        self.box = box
        self.policy: TimingPolicy = settings.timing()
        self.trusted = settings.trusted_signers()
        self.domain_salt = settings.domain_salt()
        self.st_tokens = settings.st_token_set()
        self.sc_tokens = settings.sc_token_set()
        self.log = get_logger()
        self._inflight: dict[tuple[str, Action, bytes], asyncio.Task[None]] = {}  # by Due.key
        self._due: list[Due] = []
        self._accounts_held: set[str] = set()
        self._owned: dict[str, str] = {}  # trade id -> our lease value "token#fence" (the trades we drive)
        self._next_scan = 0.0  # monotonic time of the next look for trades nobody drives
        self._next_renew = 0.0  # monotonic time the trade leases are renewed next
        self._next_sweep = 0.0  # monotonic time of the next look for late locks of finished trades
        self.live_workers = 1
        self._lease_valid_until = float("inf")  # no leases asked yet (single-engine use in tests)
        self._background: set[asyncio.Task[None]] = set()
        self._observed_at = 0.0
        self._not_before: dict[tuple[str, Action, bytes], float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._strays_kept: set[tuple[str, str, int]] = set()  # (chain, tx, log index) already in Redis
        self.clock_offset = 0.0
        self._round_states: dict[str, int] = defaultdict(int)
        self._min_left: dict[str, float] = {"st": float("inf"), "sc": float("inf")}
        self.rounds = 0
        self.started = False

    # ------------------------------------------------------------------ intake

    async def validate(self, signed: SignedInstruction) -> None:
        """Every check an instruction must pass before anything is written; raises InvalidInstruction."""
        ins = signed.instruction
        if not self.started:
            raise NotReady("the worker is still connecting to its chains and Redis; retry shortly")
        signer = signed.signer(self.domain_salt)
        if signer not in self.trusted:
            raise InvalidInstruction(f"signer {signer} is not a trusted PTS key", code="untrusted_signer")
        for side, chain_id, configured in ((self.st, ins.stChainId, self.settings.st_chain_id),
                                           (self.sc, ins.scChainId, self.settings.sc_chain_id)):
            ours = side.ledger.chain.chain_id or configured
            if ours is None:  # not connected yet (the chain is down): we cannot judge, so do not refuse
                raise NotReady(f"the {side.name} chain has not answered yet; retry shortly")
            if chain_id != ours:
                raise InvalidInstruction(f"unknown {side.name.upper()} chain id {chain_id}", code="unknown_chain")
        if ins.stToken not in self.st_tokens:
            raise InvalidInstruction(f"unknown ST token {ins.stToken}", code="unknown_token")
        if ins.scToken not in self.sc_tokens:
            raise InvalidInstruction(f"unknown SC token {ins.scToken}", code="unknown_token")
        now = await self.st.ledger.chain.now()
        if ins.deadline - now < self.policy.min_st_window():
            raise InvalidInstruction(
                f"deadline {ins.deadline} leaves less than {self.policy.min_st_window()}s",
                code="deadline_too_close",
            )

    async def intake(self, signed: SignedInstruction) -> bool:
        """Validate and store a signed instruction. True if new, False if the same one was already accepted."""
        await self.validate(signed)
        created = await self.store.create(signed, TradeState.MATCHED, ACTOR)
        if created:
            await self.store.enqueue_intake(signed.instruction.tradeId)
            self.log.info("trade_accepted", trade_id=signed.instruction.tradeId)
        return created

    # ------------------------------------------------------------------ lifecycle

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect to both chains and place each follower where no open trade's events can be missed.

        A chain or Redis that is down at start is waited for (readiness stays red), not a reason to exit.
        """
        delay = 0.5
        while True:
            try:
                await self._start_once()
                return
            except (AuthenticationError, AuthorizationError) as exc:  # not an outage: waiting would never help
                raise ConfigError(f"DVP_REDIS_URL: Redis refused the credentials ({exc})") from None
            except (LedgerError, OSError, RedisError) as exc:
                if stop is not None and stop.is_set():
                    raise
                self.log.warning("waiting_for_dependencies", error=str(exc), retry_in=delay)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        raise
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _start_once(self) -> None:
        """Redis and at least one chain must answer; a chain that is down is started later, by a round, so a
        worker restarted during an outage of one chain still protects the trades' legs on the other."""
        await self.store.ping()
        errors = []
        for side in (self.st, self.sc):
            try:
                await self._start_side(side)
            except (LedgerError, OSError) as exc:
                errors.append(exc)
                self.log.warning("chain_not_started", chain=side.name, error=str(exc))
        if len(errors) == 2:
            raise errors[0]
        self.started = True
        self.log.info("engine_started", st_chain=self.st.ledger.chain.chain_id, sc_chain=self.sc.ledger.chain.chain_id)

    async def _start_side(self, side: ChainSide) -> None:
        """Connect to one chain and place its follower where no open trade's events can be missed."""
        expected = {"st": self.settings.st_chain_id, "sc": self.settings.sc_chain_id}[side.name]
        start = {"st": self.settings.st_start_block, "sc": self.settings.sc_start_block}[side.name]
        chain_id = await side.ledger.chain.connect()
        if expected is not None and chain_id != expected:
            raise ConfigError(f"{side.name} RPC {side.ledger.chain.active_url} serves chain {chain_id}, "
                              f"not the configured DVP_{side.name.upper()}_CHAIN_ID={expected}")
        cursor = await self.store.get_cursor(side.name)
        height, bhash = (cursor if cursor else (start - 1, None))
        oldest = await self._oldest_open_block(side.name)
        if oldest is not None and oldest - 1 < height:
            height, bhash = oldest - 1, None
        side.follower = side.ledger.follower(
            confirmations=self.settings.confirmations, start_height=max(height, -1), start_hash=bhash,
            dvp=side.ledger.dvp,
        )

    async def _oldest_open_block(self, chain: str) -> int | None:
        oldest = None
        self._due = []
        for tid in await self.store.open_trades():
            rec = await self.store.get(tid)
            if rec is None:
                continue
            b = rec.get_int(f"{chain}_from_block")
            if b is not None and (oldest is None or b < oldest):
                oldest = b
        return oldest

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set; then waits for in-flight sends so nothing is left half-done.

        A round starts on a new-block notification (WebSocket, when configured) or after poll_interval.
        """
        if not self.started:
            try:
                await self.start(stop)
            except (LedgerError, OSError, RedisError):
                return  # stopped before the dependencies came up
        wake = asyncio.Event()
        watchers: list[asyncio.Task[Any]] = [
            asyncio.create_task(HeadWatcher(name, url, wake).run(stop))
            for name, url in (("st", self.settings.st_ws_url), ("sc", self.settings.sc_ws_url)) if url
        ]
        watchers.append(asyncio.create_task(self._keep_leases(stop)))
        waiter = asyncio.create_task(stop.wait())
        while not stop.is_set():
            wake.clear()
            try:
                await self.step()
            except (LedgerError, RedisError, OSError) as exc:  # a chain or Redis is down: the next round retries
                self.log.warning("round_failed", error=str(exc), error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive; the next round re-derives all
                self.log.exception("round_crashed", error=str(exc))
            if wake.is_set():
                continue  # a block arrived during the round
            woken = asyncio.create_task(wake.wait())
            await asyncio.wait({woken, waiter}, timeout=self.settings.poll_interval,
                               return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
        waiter.cancel()
        for w in watchers:
            w.cancel()
        for side in (self.st, self.sc):
            if side.following is not None:
                side.following.cancel()
                watchers.append(side.following)
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.drain()
        try:
            await self.release_accounts()  # a standby takes over at once instead of after the TTL
        except RedisError:
            pass

    async def drain(self, timeout: float = 30.0) -> None:
        tasks: list[asyncio.Task[Any]] = [t for t in self._inflight.values() if not t.done()] + list(self._background)
        tasks += [s.following for s in (self.st, self.sc) if s.following is not None and not s.following.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ------------------------------------------------------------------ one round

    async def _follow_sides(self) -> list[bool]:
        """Follow both chains at once, but never let a node that hangs (no answer until the request timeout,
        e.g. while it writes its state on shutdown) hold up the decisions for the other chain: after
        FOLLOW_BUDGET the round goes on with that chain stale, and its follow finishes in the background (it is
        not cancelled, so the follower's cursor and the index stay consistent)."""
        tasks = []
        for side in (self.st, self.sc):
            if side.following is None or side.following.done():
                side.following = asyncio.create_task(self._follow_or_mark(side))
                side.following.add_done_callback(_consume_exception)
            tasks.append(side.following)
        done, pending = await asyncio.wait(tasks, timeout=FOLLOW_BUDGET)
        for task in done:
            task.result()  # a Redis error while saving a cursor fails the round, as before
        for side in (self.st, self.sc):
            if side.following in pending:
                if side.fresh:
                    self.log.warning("chain_slow", chain=side.name, budget_s=FOLLOW_BUDGET)
                side.fresh = False
        return [side.fresh for side in (self.st, self.sc)]

    async def _follow_or_mark(self, side: ChainSide) -> bool:
        """Follow one chain; a chain that does not answer is marked stale for this round (decide() then does
        nothing that needs it) instead of stopping the work on the other chain."""
        try:
            if side.follower is None:
                await self._start_side(side)
            await self._follow(side)
            side.fresh = True
        except (LedgerError, OSError) as exc:
            if side.fresh:
                self.log.warning("chain_stale", chain=side.name, error=str(exc), error_type=type(exc).__name__)
            side.fresh = False
        return side.fresh

    async def _follow(self, side: ChainSide) -> None:
        assert side.follower is not None
        before = side.follower.last_head
        res = await side.follower.poll()
        if res.rewound_to is not None:
            side.index.rewind(res.rewound_to)
            self.log.warning("reorg_rewind", chain=side.name, to_height=res.rewound_to)
        side.index.apply(res.events)
        side.index.learn_preimages(res.preimages)
        height, bhash = side.follower.cursor
        metrics.FOLLOWER_LAG.labels(side.name).set(max(0, res.head - height))
        metrics.FOLLOWER_HEIGHT.labels(side.name).set(height)
        metrics.RPC_ERRORS.labels(side.name).set(side.ledger.chain.rpc_errors)
        if bhash:
            await self.store.set_cursor(side.name, height, bhash)
        if res.head != side.head:
            side.head, side.head_timestamp, side.head_seen_at = res.head, res.head_timestamp, time.time()
        if res.head != before:
            side.ledger.notify_new_block()
            if side.reviving is None or side.reviving.done():
                side.reviving = self._in_background(self._revive(side))
        if side.ledger.chain.reconnects != side.reconnects_seen:
            side.reconnects_seen = side.ledger.chain.reconnects
            self._in_background(self._heal(side))

    async def _revive(self, side: ChainSide) -> None:
        """After each new block: re-send any transaction of ours that a reorg within k took out of the chain."""
        for sender in list(side.ledger.senders.values()):
            try:
                revived = await sender.revive_reorged(self.settings.confirmations + 1)
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

    def _in_background(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _hold_accounts(self) -> None:
        """Several workers may share one Redis and the same keys: an account lease makes exactly one of them
        the signer of each account (no nonce races). Live workers split the accounts evenly; a lease passes
        on when it lapses, or at once when its holder is a process on this host that has died."""
        accounts = sorted(set(self.st.ledger.all_senders) | set(self.sc.ledger.all_senders))
        if not accounts:
            return
        ttl_ms = int(self.settings.lease_ttl * 1000)
        asked = time.monotonic()
        live = await self.store.heartbeat(WORKER_TOKEN, self.settings.lease_ttl)
        dead_workers = [t for t in live if holder_is_dead(t)]  # killed on this host: do not wait for its TTL
        await self.store.leave(*dead_workers)
        self.live_workers = max(1, len(live) - len(dead_workers))
        share = math.ceil(len(accounts) / self.live_workers)
        names = [f"account:{a}" for a in accounts]
        current = await self.store.account_lease_holders(names)
        keep = [n for n in names if current[n] == WORKER_TOKEN]
        extra = keep[share:] if len(keep) > share else []
        extra = [n for n in extra if not self._busy(n.split(":", 1)[1])]  # never hand over mid-transaction
        if extra:
            await self.store.release_leases(extra, WORKER_TOKEN)
        keep = [n for n in keep if n not in extra]
        free = [n for n in names if (holder := current[n]) is None or holder_is_dead(holder)]
        wanted = keep + free[:max(0, share - len(keep))]
        dead = {n: holder for n in wanted if (holder := current[n]) and holder != WORKER_TOKEN}
        holders = await self.store.hold_leases(wanted, WORKER_TOKEN, ttl_ms, dead=dead) if wanted else {}
        if dead:
            self.log.info("account_leases_taken_from_dead_worker", leases=sorted(dead))
        mine = {a for a in accounts if holders.get(f"account:{a}") == WORKER_TOKEN}
        self._lease_valid_until = asked + 0.8 * self.settings.lease_ttl
        if mine != self._accounts_held:
            self.log.info("account_leases", held=sorted(mine), lost=sorted(self._accounts_held - mine),
                          live_workers=self.live_workers)
        self._accounts_held = mine
        await self.st.ledger.set_active(mine)
        await self.sc.ledger.set_active(mine)

    async def _renew_trades(self) -> None:
        """Renew the leases of the trades we drive; forget any that passed to another worker."""
        if not self._owned:
            return
        held = dict(self._owned)
        values = await self.store.hold_trade_leases(list(held), WORKER_TOKEN, int(self.settings.lease_ttl * 1000))
        for tid, value in values.items():
            if value != held[tid]:
                self._owned.pop(tid, None)
                self.log.info("trade_lease_lost", trade_id=tid)

    def _busy(self, account: str) -> bool:
        return any(s.in_flight for led in (self.st.ledger, self.sc.ledger)
                   if (s := led.all_senders.get(account)) is not None)

    async def _own_trades(self) -> dict[str, str]:
        """The trades this worker drives: new ones from the intake stream (consumer group), ones whose driver
        died (lease lapsed, or its process on this host is gone), up to an even share of the open trades.
        Each lease carries a fencing number; state writes check it (see Store.update)."""
        ttl_ms = int(self.settings.lease_ttl * 1000)
        if time.monotonic() >= self._next_renew:
            self._next_renew = time.monotonic() + self.settings.lease_ttl / 4
            await self._renew_trades()
        entries = await self.store.read_intake(WORKER_TOKEN, count=16, min_idle_ms=ttl_ms)
        candidates = {tid for _, tid in entries}
        dead: dict[str, str] = {}
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + min(1.0, self.settings.lease_ttl / 4)
            open_ids = await self.store.open_trades(settled_for=1.0)
            others = [t for t in open_ids if t not in candidates and t not in self._owned]
            share = math.ceil(await self.store.count_open() / self.live_workers)
            room = max(0, share - len(candidates) - len(self._owned))
            for tid, holder in (await self.store.trade_lease_holders(others)).items():
                if room <= 0:
                    break
                if holder is None or holder_is_dead(holder.split("#", 1)[0]):
                    candidates.add(tid)
                    room -= 1
                    if holder is not None:
                        dead[tid] = holder
        new = sorted(candidates - set(self._owned))  # ours are renewed every TTL/4, not every round
        values = await self.store.hold_trade_leases(new, WORKER_TOKEN, ttl_ms, dead=dead) if new else {}
        owned = dict(self._owned) | {t: v for t, v in values.items() if v.startswith(WORKER_TOKEN + "#")}
        self._owned = owned
        metrics.OWNED_TRADES.set(len(owned))
        await self.store.ack_intake([eid for eid, _ in entries])
        return owned

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the account leases on their own timer, so a slow round (a node timing out) cannot let them
        lapse while this worker is alive."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.lease_ttl / 4)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self._hold_accounts()
                self._next_renew = time.monotonic() + self.settings.lease_ttl / 4
                await self._renew_trades()
            except (RedisError, LedgerError, OSError) as exc:
                self.log.warning("lease_renewal_failed", error=str(exc))

    async def release_accounts(self) -> None:
        """On shutdown: hand accounts and trades to the other workers at once instead of after the TTL."""
        accounts = sorted(set(self.st.ledger.all_senders) | set(self.sc.ledger.all_senders))
        await self.store.release_leases([f"account:{a}" for a in accounts], WORKER_TOKEN)
        await self.store.release_trade_leases(self._owned)
        self._owned = {}
        await self.store.leave(WORKER_TOKEN)

    async def step(self) -> None:
        await self._hold_accounts()
        fresh = await self._follow_sides()
        if not any(fresh):
            raise RpcUnavailable("neither chain answers: nothing can be decided this round")
        self._observed_at = time.monotonic()
        now_st, now_sc = self.st.now(), self.sc.now()
        self.clock_offset = now_st - now_sc
        metrics.CLOCK_OFFSET.set(self.clock_offset)
        self._round_states = defaultdict(int)
        self._min_left = {"st": float("inf"), "sc": float("inf")}
        self._due = []
        owned = await self._own_trades()
        routed = await self.store.take_routed(sorted(self._accounts_held), 200) if self._accounts_held else []
        ids = list(owned) + [t for t in dict.fromkeys(routed) if t not in owned]
        for rec in await self.store.get_many(ids):
            if rec.state in TERMINAL:
                if rec.trade_id in owned:
                    await self.store.release_trade_leases({rec.trade_id: owned[rec.trade_id]})
                    self._owned.pop(rec.trade_id, None)
                continue
            try:
                await self._advance(rec, now_st, now_sc, fence=owned.get(rec.trade_id))
            except FencedOut:
                self._owned.pop(rec.trade_id, None)  # another worker took it over: stop acting on it
            except ConcurrentUpdate:
                pass  # another worker moved it: next round re-reads
            self._round_states[rec.state.value] += 1
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + 2.0
            await self._sweep_strays()
        if self.rounds % 200 == 0:
            await self._prune_index()
        for state in TradeState:
            if state not in TERMINAL:
                metrics.TRADES.labels(state.value).set(self._round_states.get(state.value, 0))
        for terminal, n in (await self.store.terminal_counts()).items():
            metrics.TRADES.labels(terminal).set(n)
        for leg, left in self._min_left.items():
            metrics.TIMELOCK_MIN_LEFT.labels(leg).set(left)
        self._dispatch(self._due)
        self.rounds += 1

    def roles_for(self, rec: TradeRecord) -> Roles:
        ins = rec.signed.instruction
        # Roles are the keys this firm's workers hold; which worker signs is the account lease's business
        # (an action needing an account leased elsewhere is routed to that worker's outbox).
        return Roles(
            seller=ins.sellerStAccount in self.st.ledger.all_senders,
            buyer=ins.buyerScAccount in self.sc.ledger.all_senders,
            st_gas=bool(self.st.ledger.all_senders),
            sc_gas=bool(self.sc.ledger.all_senders),
        )

    async def _advance(self, rec: TradeRecord, now_st: int, now_sc: int, fence: str | None = None) -> None:
        """Decide one trade. With `fence` (our trade lease) this worker drives it: it writes state, creates the
        secret and reports. Without, it only helps: the trade was routed here because a due action needs an
        account this worker signs for; it acts, and leaves every record write to the driver."""
        if self.is_atomic(rec):
            await self._advance_atomic(rec, now_st, fence)
            return
        ins = rec.signed.instruction
        log = self.log.bind(trade_id=ins.tradeId)
        roles = self.roles_for(rec)
        st_leg, st_ev, sc_leg, sc_ev, strays = self._legs(rec)
        if fence is not None:
            await self._note_from_blocks(rec, fence)
            if roles.seller and st_leg.lock is None and not st_leg.refunded and self.st.fresh:
                if rec.get("hashlock") is None:
                    await self._prepare_secret(rec, now_st, log, fence)
                else:
                    await self._replan_lock(rec, now_st, log, fence)
        hashlock = bytes.fromhex(rec.fields["hashlock"]) if rec.get("hashlock") else None
        view = TradeView(
            instruction=ins, st=st_leg, sc=sc_leg, now_st=now_st, now_sc=now_sc, clock_offset=self.clock_offset,
            head_st=self.st.head_timestamp, head_sc=self.sc.head_timestamp,
            our_hashlock=hashlock, planned_t_st=rec.get_int("t_st"),
            sc_confirmed_time=self.sc.follower.confirmed_timestamp if self.sc.follower else 0,
            st_fresh=self.st.fresh, sc_fresh=self.sc.fresh, revealed=rec.state is TradeState.SC_CLAIMED,
            seen_preimage=self._seen_preimage(st_leg),
        )
        d = decide(view, roles, self.policy)
        if fence is not None:
            await self._keep_strays(rec, strays, log)
            await self._report_anomalies(rec, d, [i.lock for _, i in strays], log)
            self._watch_timelocks(rec, st_leg, sc_leg, now_st, now_sc, log)
            observed: dict[str, Any] = {}
            learned = sc_leg.preimage or view.seen_preimage
            if learned and st_leg.active and rec.get("secret") is None:
                # the counterparty's secret, kept (sealed) before the claim it allows: a worker restarted while the
                # revealing chain is down or still being replayed claims from Redis instead of waiting for it
                observed["secret"] = self.box.seal(learned, ins.tradeId)
            if st_leg.lock and rec.get("st_timelock") is None:
                observed["st_timelock"] = st_leg.lock.timelock
            if sc_leg.lock and rec.get("sc_timelock") is None:
                observed["sc_timelock"] = sc_leg.lock.timelock
            await self._apply(rec, d, observed, log, fence)
        for action in d.actions:
            self._due.append(Due(rec, action, view, st_ev, sc_ev, self._observed_at))

    def _legs(self, rec: TradeRecord) -> tuple[LegView, LockedEvent | None, LegView, LockedEvent | None,
                                                 list[tuple[ChainSide, LockInstance]]]:
        """The lock each leg follows (the expected sender's first with acceptable terms, see choose_lock) and every
        other lock under the trade id: re-locks, locks by anyone else. Those are strays: never acted on but to
        refund them at their timelock."""
        ins = rec.signed.instruction
        tid = ins.trade_id_bytes
        st_all, sc_all = self.st.index.instances(tid), self.sc.index.instances(tid)
        st_mine = [i for i in st_all if i.lock.sender == ins.sellerStAccount]
        pick = choose_lock([i.view() for i in st_mine], lambda lock: check_st_lock(ins, lock))
        st_inst = st_mine[pick] if pick is not None else None
        st_leg = st_inst.view() if st_inst else LegView()
        hashlock = st_leg.lock.hashlock if st_leg.lock else (
            bytes.fromhex(rec.fields["hashlock"]) if rec.get("hashlock") else None)
        t_st = st_leg.lock.timelock if st_leg.lock else rec.get_int("t_st")
        sc_mine = [i for i in sc_all if i.lock.sender == ins.buyerScAccount]
        pick = choose_lock([i.view() for i in sc_mine],
                           lambda lock: check_sc_lock(ins, lock, hashlock, t_st, self.policy.delta()))
        sc_inst = sc_mine[pick] if pick is not None else None
        strays = [(self.st, i) for i in st_all if i is not st_inst] + [(self.sc, i) for i in sc_all if i is not sc_inst]
        return (st_leg, st_inst.lock if st_inst else None, sc_inst.view() if sc_inst else LegView(),
                sc_inst.lock if sc_inst else None, strays)

    async def _keep_strays(self, rec: TradeRecord, strays: list[tuple[ChainSide, LockInstance]], log: Any) -> None:
        """Persist the live strays (once each): the watcher refunds them at their timelock, after a restart too."""
        for side in (self.st, self.sc):
            new = [i.lock for s, i in strays if s is side and i.live
                   and (side.name, i.lock.tx_hash, i.lock.log_index) not in self._strays_kept]
            if not new:
                continue
            if await self.store.add_strays(side.name, [ev.terms() for ev in new]):
                log.info("stray_locks_kept", chain=side.name, locks=len(new))
            self._strays_kept |= {(side.name, ev.tx_hash, ev.log_index) for ev in new}

    async def _advance_atomic(self, rec: TradeRecord, now_st: int, fence: str | None) -> None:
        """A same-ledger trade: settled when a confirmed Settled event carries our terms' digest."""
        ins = rec.signed.instruction
        log = self.log.bind(trade_id=ins.tradeId)
        digest = self.st.ledger.dvp_digest(dvp_terms(ins))
        settlements = self.st.index.settlements.get(ins.trade_id_bytes, [])
        view = AtomicView(ins, settled=any(e.digest == digest for e in settlements), now=now_st,
                          confirmed_time=self.st.follower.confirmed_timestamp if self.st.follower else 0)
        d = decide_atomic(view, self.roles_for(rec), self.policy)
        if not self.st.fresh:
            d.actions = []
        if fence is not None:
            await self._note_from_blocks(rec, fence)
            await self._report_anomalies(rec, d, [], log)
            await self._apply(rec, d, {}, log, fence)
        for action in d.actions:
            self._due.append(Due(rec, action, None, None, None, self._observed_at))

    async def _note_from_blocks(self, rec: TradeRecord, fence: str) -> None:
        """Remember, once, from which blocks this trade's events must be read after a restart."""
        if rec.get_int("st_from_block") is None and self.st.follower and self.sc.follower \
                and self.st.fresh and self.sc.fresh:
            await self.store.update(rec, {"st_from_block": max(0, self.st.follower.last_head - 64),
                                          "sc_from_block": max(0, self.sc.follower.last_head - 64)},
                                    actor=ACTOR, event=None, fence=fence)

    async def _apply(self, rec: TradeRecord, d: Decision, observed: dict[str, Any], log: Any, fence: str) -> None:
        """Persist the decided state (compare-and-set, fenced, audited); forget and archive a finished trade."""
        if "secret" in observed:
            await self.store.update(rec, {"secret": observed.pop("secret")}, actor=ACTOR, event="secret_learned",
                                    fence=fence)
        if d.state != rec.state and can_transition(rec.state, d.state):
            old = rec.state
            await self.store.update(rec, {"state": d.state.value, **observed}, actor=ACTOR, event="state",
                                    fence=fence, **{"from": old.value, "to": d.state.value})
            log.info("trade_state", from_state=old.value, to_state=d.state.value)
            metrics.TRANSITIONS.labels(d.state.value).inc()
            if d.state is TradeState.SETTLED:
                metrics.SETTLE_SECONDS.observe(time.time() - float(rec.fields["created_at"]))
            if d.state in TERMINAL:
                self._forget(rec)
                self._archive_later(rec.trade_id)
        elif observed:
            await self.store.update(rec, observed, actor=ACTOR, event=None, fence=fence)

    async def _sweep_strays(self) -> None:
        """Every lock the relayer has seen under one of its trade ids ends claimed or refunded. Locks the protocol
        does not follow (strays, see _legs) are kept in Redis; so are locks of a trade that had already finished
        (a counterparty that locked late, or re-locked a settled trade id). Once a stray's timelock has passed it
        is refunded as a watcher (permissionless, pays the sender back: always safe), and dropped once its slot
        no longer holds it. One worker sweeps: the holder of the first account."""
        accounts = sorted(set(self.st.ledger.all_senders) | set(self.sc.ledger.all_senders))
        if not accounts or accounts[0] not in self._accounts_held:
            return
        still_open = {bytes.fromhex(t[2:]) for t in await self.store.open_trades()}
        late: list[tuple[ChainSide, LockInstance]] = []
        for side in (self.st, self.sc):
            late += [(side, i) for tid in side.index.locks if tid not in still_open
                     for i in side.index.instances(tid) if i.live]
        if late:
            finished = {rec.trade_id for rec in await self.store.get_many(
                sorted({"0x" + i.lock.trade_id.hex() for _, i in late})) if rec.state in TERMINAL}
            for side in (self.st, self.sc):  # not ours (another firm's trade on a shared escrow): left alone
                kept = [i.lock for s, i in late if s is side and "0x" + i.lock.trade_id.hex() in finished
                        and (side.name, i.lock.tx_hash, i.lock.log_index) not in self._strays_kept]
                if kept and await self.store.add_strays(side.name, [ev.terms() for ev in kept]):
                    self.log.info("late_locks_kept", chain=side.name, locks=len(kept))
                self._strays_kept |= {(side.name, ev.tx_hash, ev.log_index) for ev in kept}
        for side in (self.st, self.sc):
            if side.fresh:
                await self._refund_strays(side)

    async def _refund_strays(self, side: ChainSide) -> None:
        """Refunds due for one chain's strays whose timelock its latest block has passed."""
        due = await self.store.due_strays(side.name, side.head_timestamp)
        if not due:
            return
        locks = [LockedEvent.from_terms(t) for t in due]
        slots = await side.ledger.swap_slots([ev.swap_id for ev in locks])
        await self.store.drop_strays(side.name, [t for t, ev, slot in zip(due, locks, slots) if slot != ev.terms_hash])
        live = [ev for ev, slot in zip(locks, slots) if slot == ev.terms_hash]
        recs = {rec.trade_id: rec for rec in await self.store.get_many(sorted({"0x" + ev.trade_id.hex() for ev in live}))}
        action = Action.REFUND_ST if side is self.st else Action.REFUND_SC
        for ev in live:
            rec = recs.get("0x" + ev.trade_id.hex())
            if rec is None:
                continue
            self._due.append(Due(rec, action, None, ev if side is self.st else None,
                                 ev if side is self.sc else None, self._observed_at))
            key = (rec.trade_id, f"stray-{ev.terms_hash.hex()}")
            if key not in self._reported:
                self._reported.add(key)
                self.log.info("stray_lock_refund_due", trade_id=rec.trade_id, chain=side.name, sender=ev.sender)

    async def _prune_index(self) -> None:
        """Drop chain-index entries of trades that are no longer open (finished under another worker)."""
        open_ids = {bytes.fromhex(t[2:]) for t in await self.store.open_trades()}
        for side in (self.st, self.sc):
            side.index.retain(open_ids | side.index.live_trade_ids())  # a live lock may still become a stray

    def _archive_later(self, trade_id: str) -> None:
        """Compact a finished trade once the audit entries of its last transactions are written."""
        async def later() -> None:
            await asyncio.sleep(max(2.0, 2 * self.settings.block_time))
            for _ in range(3):
                try:
                    if await self.store.archive(trade_id):
                        return
                except RedisError:
                    pass
                await asyncio.sleep(1.0)

        self._in_background(later())

    def _forget(self, rec: TradeRecord) -> None:
        """Drop a finished trade's in-memory traces so a long-running worker's memory stays flat (its live strays
        are in Redis; a lock made later is seen by the follower again and kept by the sweep)."""
        for key in [k for k in self._not_before if k[0] == rec.trade_id]:
            self._not_before.pop(key, None)
        for key in [k for k, t in self._inflight.items() if k[0] == rec.trade_id and t.done()]:
            self._inflight.pop(key, None)
        self._reported = {k for k in self._reported if k[0] != rec.trade_id}
        tid = rec.signed.instruction.trade_id_bytes
        for side in (self.st, self.sc):
            for i in side.index.instances(tid):
                self._strays_kept.discard((side.name, i.lock.tx_hash, i.lock.log_index))
            side.index.forget(tid)

    def _watch_timelocks(self, rec: TradeRecord, st_leg: LegView, sc_leg: LegView, now_st: int, now_sc: int,
                         log: Any) -> None:
        """Export the least time left on live locks, and warn once a live lock has less than 2Δ left."""
        for leg, view, now in (("st", st_leg, now_st), ("sc", sc_leg, now_sc)):
            if not view.active or view.lock is None:
                continue
            left = view.lock.timelock - now
            self._min_left[leg] = min(self._min_left[leg], left)
            if 0 < left < 2 * self.policy.delta():
                key = (rec.trade_id, f"near-{leg}")
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning("timelock_near", leg=leg, seconds_left=left, state=rec.state.value)

    async def _prepare_secret(self, rec: TradeRecord, now_st: int, log: Any, fence: str) -> None:
        """Seller side, before any transaction: create s, persist it sealed with H and T_st (intent)."""
        ins = rec.signed.instruction
        t_st = min(ins.deadline, now_st + self.policy.st_lock_duration)
        if t_st - now_st < self.policy.min_st_window():
            return  # decide() will abort the trade once the deadline passes; nothing was locked
        secret = os.urandom(32)
        await self.store.update(
            rec,
            {"hashlock": hashlib.sha256(secret).hexdigest(), "secret": self.box.seal(secret, ins.tradeId),
             "t_st": t_st},
            actor=ACTOR, event="secret_created", fence=fence, t_st=t_st,
        )
        log.info("secret_created", t_st=t_st)

    async def _replan_lock(self, rec: TradeRecord, now_st: int, log: Any, fence: str) -> None:
        """The ST lock never went out in its window (the ST chain or this worker was down for long): give it a
        new T_st while the deadline leaves room, instead of letting the trade abort. The secret stays the same,
        so a lock from the old plan that lands after all still works with it; nothing is public before a lock."""
        t_st = rec.get_int("t_st")
        if t_st is None or t_st - now_st >= self.policy.min_st_window():
            return
        inflight = self._inflight.get((rec.trade_id, Action.LOCK_ST, b""))  # Due.key of a lock
        if inflight is not None and not inflight.done():
            return
        new_t_st = min(rec.signed.instruction.deadline, now_st + self.policy.st_lock_duration)
        if new_t_st - now_st < self.policy.min_st_window():
            return  # no room before the deadline: decide() aborts the trade, nothing was locked
        await self.store.update(rec, {"t_st": new_t_st}, actor=ACTOR, event="lock_replanned", fence=fence,
                                t_st=new_t_st, was=t_st)
        log.info("lock_replanned", t_st=new_t_st, was=t_st)

    async def _report_anomalies(self, rec: TradeRecord, d: Decision, foreign: list[LockedEvent], log: Any) -> None:
        for note in d.notes:
            key = (rec.trade_id, note)
            if key not in self._reported:
                self._reported.add(key)
                await self.store.add_audit(rec.trade_id, ACTOR, "not_acting", reason=note)
                log.warning("counterparty_terms", reason=note)
        for ev in foreign:
            key = (rec.trade_id, ev.tx_hash)
            if key not in self._reported:
                self._reported.add(key)
                await self.store.add_audit(rec.trade_id, ACTOR, "foreign_lock_ignored", sender=ev.sender,
                                           tx=ev.tx_hash, block=ev.block)
                log.warning("foreign_lock_ignored", sender=ev.sender, tx=ev.tx_hash)
        if d.one_sided and (rec.trade_id, "one-sided") not in self._reported:
            self._reported.add((rec.trade_id, "one-sided"))
            log.error("atomicity_violation", notes=d.notes)

    # ------------------------------------------------------------------ actions

    def _dispatch(self, due: list[Due]) -> None:
        """Start the due actions that are not already in flight, grouped so that actions of one kind, on one
        chain, signed by one account go out as one batch transaction (up to DVP_BATCH_MAX swaps)."""
        now = time.monotonic()
        for key in [k for k, t in self._inflight.items() if t.done()]:
            del self._inflight[key]
        groups: dict[tuple[str, str, str], list[Due]] = defaultdict(list)
        for d in due:
            task = self._inflight.get(d.key)
            if (task is not None and not task.done()) or now < self._not_before.get(d.key, 0.0):
                continue
            groups[self._group_key(d)].append(d)
        size = max(1, self.settings.batch_max)
        for items in groups.values():
            for i in range(0, len(items), size):
                chunk = items[i:i + size]
                task = asyncio.create_task(self._act(chunk))
                for d in chunk:
                    self._inflight[d.key] = task

    def _group_key(self, d: Due) -> tuple[str, str, str]:
        ins = d.rec.signed.instruction
        kind, leg = d.action.value.split("_")
        if d.action is Action.LOCK_ST:
            return (leg, kind, ins.sellerStAccount)
        if d.action is Action.LOCK_SC:
            return (leg, kind, ins.buyerScAccount)
        if d.action is Action.SETTLE_DVP:
            via = self.st.ledger.any_sender([ins.sellerStAccount, ins.buyerScAccount])
            return ("dvp", kind, via.address if via else "")
        ledger = self.st.ledger if leg == "st" else self.sc.ledger
        via = ledger.any_sender(self._prefer(d))
        return (leg, kind, via.address if via else "")

    def is_atomic(self, rec: TradeRecord) -> bool:
        """Same-ledger fast path: both legs on one chain that has an AtomicDvP, one account per party."""
        ins = rec.signed.instruction
        return (self.st.ledger.dvp is not None and ins.stChainId == ins.scChainId
                and ins.sellerStAccount == ins.sellerScAccount and ins.buyerStAccount == ins.buyerScAccount)

    def _prefer(self, d: Due) -> list[str]:
        ins = d.rec.signed.instruction
        if d.action in (Action.CLAIM_SC, Action.REFUND_SC):
            return [ins.sellerScAccount, ins.buyerScAccount]
        return [ins.buyerStAccount, ins.sellerStAccount]

    async def _act(self, items: list[Due]) -> None:
        """Check each item against the chain, send one transaction (a batch when several), record the outcome."""
        action = items[0].action
        cooldown = (self.settings.confirmations + 1) * self.settings.block_time
        try:
            slots = await self._slots(items)
            prepared = [p for p in await asyncio.gather(*(self._prepare_or_route(d, slot)
                                                          for d, slot in zip(items, slots)))
                        if p is not None]
            if not prepared:
                return
            if len(prepared) == 1:
                await self._send_and_record(prepared, prepared[0].single, gas=_SINGLE_GAS[action.value.split("_")[0]])
                return
            prepared.sort(key=lambda p: p.sort_key)  # consecutive same token+counterparty: one transfer
            kind = action.value.split("_")[0]
            data = encode_call(*_BATCH_FN[kind], [p.entry for p in prepared])
            try:
                await prepared[0].via.estimate_gas(prepared[0].target, data)
            except TransactionReverted as exc:
                # one entry would fail the whole batch (all-or-nothing): send them one by one instead
                self.log.warning("batch_fallback", action=action.value, size=len(prepared), reason=exc.reason)
                gas = _SINGLE_GAS[action.value.split("_")[0]]
                results = await asyncio.gather(*(self._send_and_record([p], p.single, gas=gas) for p in prepared),
                                               return_exceptions=True)
                for p, res in zip(prepared, results):  # each trade gets its own outcome, not its neighbour's
                    if isinstance(res, Exception):
                        reason = getattr(res, "reason", None) or str(res)
                        self._not_before[p.due.key] = time.monotonic() + 2 * self.settings.block_time
                        await self.store.add_audit(p.due.rec.trade_id, ACTOR, f"{action.value}_failed", reason=reason)
                return
            await self._send_and_record(prepared, data)
        except TransactionReverted as exc:
            cooldown = 2 * self.settings.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            for d in items:
                self.log.warning("action_failed", trade_id=d.rec.trade_id, action=action.value,
                                 reason=exc.reason or str(exc))
                await self.store.add_audit(d.rec.trade_id, ACTOR, f"{action.value}_failed",
                                           reason=exc.reason or str(exc))
        except LedgerError as exc:
            cooldown = 2 * self.settings.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            self.log.warning("action_failed", action=action.value, size=len(items), reason=str(exc),
                             error_type=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected node answer: retry later, never die
            cooldown = 2 * self.settings.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            self.log.exception("action_crashed", action=action.value, size=len(items), error=str(exc))
        finally:
            until = time.monotonic() + cooldown
            for d in items:
                self._not_before[d.key] = until

    async def _send_and_record(self, prepared: list[Prepared], data: str, gas: int | None = None) -> None:
        ledger, via = prepared[0].ledger, prepared[0].via
        action = prepared[0].due.action
        if time.monotonic() > self._lease_valid_until:
            raise LeaseLost(f"account lease of {via.address} may have lapsed: not sending")
        # the reveal races T_sc under whatever congestion the counterparty may cause: it pays to win inclusion
        tx = await via.send(prepared[0].target, data, gas=gas, urgent=action is Action.CLAIM_SC)
        tx_hash = tx.tx_hash.to_0x_hex()
        sent_at = time.monotonic()
        batch = {"batch": len(prepared)} if len(prepared) > 1 else {}
        metrics.TX_SENT.labels(ledger.kind, action.value).inc()
        for p in prepared:
            reaction = sent_at - p.due.observed_at
            metrics.REACTION_SECONDS.observe(reaction)
            await self.store.add_audit(p.due.rec.trade_id, ACTOR, f"{action.value}_sent", tx=tx_hash, nonce=tx.nonce,
                                       chain=ledger.kind, reaction_ms=round(reaction * 1000, 1), **batch)
            self.log.info("tx_sent", trade_id=p.due.rec.trade_id, action=action.value, tx=tx_hash, chain=ledger.kind,
                          **batch)
        receipt = await via.wait(tx, timeout=self._wait_budget(prepared))
        gas = int(receipt["gasUsed"])
        metrics.GAS.labels(ledger.kind, action.value).inc(gas)
        mined = receipt["transactionHash"].to_0x_hex()
        for p in prepared:
            await self.store.add_audit(p.due.rec.trade_id, ACTOR, f"{action.value}_mined", tx=mined,
                                       block=receipt["blockNumber"], gas=gas // len(prepared), chain=ledger.kind,
                                       **batch)
            self.log.info("tx_mined", trade_id=p.due.rec.trade_id, action=action.value, tx=mined,
                          block=receipt["blockNumber"], gas=gas // len(prepared),
                          seconds=round(time.monotonic() - sent_at, 3))

    def _wait_budget(self, prepared: list[Prepared]) -> float:
        """How long to keep one transaction alive before re-planning: until the earliest timelock it races
        (after it a claim cannot succeed and decide() should pick the refund), at most 120 s, and never less
        than a few blocks."""
        expiries = [p.expires for p in prepared if p.expires is not None]
        if not expiries:
            return 120.0
        side = self.st if prepared[0].ledger is self.st.ledger else self.sc
        timelock = min(expiries)
        floor = 4 * self.settings.block_time + self.settings.inclusion_delay
        return min(120.0, max(floor, float(timelock - side.now())))

    def _swap_of(self, d: Due) -> tuple[HtlcLedger, bytes]:
        """The ledger and swap id an action touches."""
        ins = d.rec.signed.instruction
        tid = ins.trade_id_bytes
        if d.action is Action.SETTLE_DVP:
            return self.st.ledger, self.st.ledger.dvp_digest(dvp_terms(ins))
        if d.action is Action.LOCK_ST:
            return self.st.ledger, swap_id(ins.sellerStAccount, tid)
        if d.action is Action.LOCK_SC:
            return self.sc.ledger, swap_id(ins.buyerScAccount, tid)
        ev = d.sc_ev if d.action in (Action.CLAIM_SC, Action.REFUND_SC) else d.st_ev
        assert ev is not None
        return (self.sc.ledger if d.action in (Action.CLAIM_SC, Action.REFUND_SC) else self.st.ledger), ev.swap_id

    async def _slots(self, items: list[Due]) -> list[bytes]:
        """The current storage slot of every item's swap (all on one chain), in one round trip."""
        ledger = self._swap_of(items[0])[0]
        contract = ledger.dvp if items[0].action is Action.SETTLE_DVP else None
        return await ledger.swap_slots([self._swap_of(d)[1] for d in items], contract)

    async def _prepare_or_route(self, d: Due, slot: bytes) -> Prepared | None:
        """_prepare(); when the action needs an account another worker signs for, hand the trade to it."""
        try:
            return await self._prepare(d, slot)
        except (NeedsAccount, LeaseLost) as exc:
            account = exc.account
            if account is None:
                raise
        if await self.store.route(account, d.rec.trade_id, ttl_ms=2000):
            metrics.ROUTED.inc()
            self.log.info("action_routed", trade_id=d.rec.trade_id, action=d.action.value, account=account)
        return None

    def _sender(self, ledger: HtlcLedger, account: str) -> TxSender:
        """The sender of `account` if this worker holds its lease; else NeedsAccount (route the action)."""
        via = ledger.senders.get(account)
        if via is None:
            raise NeedsAccount(account)
        return via

    def _gas_sender(self, ledger: HtlcLedger, prefer: list[str]) -> TxSender:
        """Any account this worker signs for on `ledger` (claims and refunds need no particular one)."""
        via = ledger.any_sender(prefer)
        if via is None:
            known = [a for a in prefer if a in ledger.all_senders] or list(ledger.all_senders)
            if not known:
                raise LeaseLost(f"{ledger.chain.name}: no key to pay gas with")
            raise NeedsAccount(known[0])
        return via

    async def _prepare(self, d: Due, slot: bytes) -> Prepared | None:
        """Given the swap's current slot, None when the chain shows the action is no longer needed."""
        rec, action = d.rec, d.action
        ins = rec.signed.instruction
        tid = ins.trade_id_bytes
        st, sc = self.st.ledger, self.sc.ledger
        if action is Action.SETTLE_DVP:
            return await self._prepare_settle(d, slot)
        if action is Action.LOCK_ST:
            if slot != bytes(32):
                return None  # already locked (maybe by our previous incarnation): wait for confirmations
            via = self._sender(st, ins.sellerStAccount)
            await st.ensure_allowance(ins.sellerStAccount, ins.stToken, ins.stAmount)
            terms = (tid, ins.stToken, ins.stAmount, ins.buyerStAccount, bytes.fromhex(rec.fields["hashlock"]),
                     int(rec.fields["t_st"]))
            return Prepared(d, st, via, encode_call(ESCROW, ESCROW_FN["lock"], *terms), terms,
                            (ins.stToken,), expires=terms[-1])
        if action is Action.LOCK_SC:
            assert d.st_ev is not None
            t_sc = sc_timelock_for(d.st_ev.timelock, self.policy.delta())
            if slot != bytes(32):
                return None
            via = self._sender(sc, ins.buyerScAccount)
            if rec.get("t_sc") is None:
                await self.store.update(rec, {"t_sc": t_sc}, actor=ACTOR, event="sc_lock_planned", t_sc=t_sc)
            await sc.ensure_allowance(ins.buyerScAccount, ins.scToken, ins.scAmount)
            terms = (tid, ins.scToken, ins.scAmount, ins.sellerScAccount, d.st_ev.hashlock, t_sc)
            return Prepared(d, sc, via, encode_call(ESCROW, ESCROW_FN["lock"], *terms), terms,
                            (ins.scToken,), expires=t_sc)
        ledger, ev = (sc, d.sc_ev) if action in (Action.CLAIM_SC, Action.REFUND_SC) else (st, d.st_ev)
        assert ev is not None
        sid = ev.swap_id
        if slot != ev.terms_hash:
            return None  # claimed or refunded already (a later lock of the same swap id may hold the slot now)
        via = self._gas_sender(ledger, self._prefer(d))
        if action in (Action.REFUND_ST, Action.REFUND_SC):
            swap = (ev.trade_id, ev.sender, ev.token, ev.amount, ev.receiver, ev.hashlock, ev.timelock)
            return Prepared(d, ledger, via, encode_call(ESCROW, ESCROW_FN["refund"], swap), swap, (ev.token, ev.sender))
        preimage = self._preimage(rec, d.view)
        if preimage is None:
            return None
        claim = (preimage, sid, ev.token, ev.amount, ev.receiver, ev.timelock)
        return Prepared(d, ledger, via, encode_call(ESCROW, ESCROW_FN["claim"], *claim), claim, (ev.token, ev.receiver),
                        expires=ev.timelock)

    async def _prepare_settle(self, d: Due, slot: bytes) -> Prepared | None:
        """Same-ledger path: both parties' authorisations over the exact terms, one AtomicDvP call."""
        ins = d.rec.signed.instruction
        ledger = self.st.ledger
        if slot != bytes(32):
            return None  # settled already (maybe by our previous incarnation): wait for confirmations
        if ledger.dvp is None:
            return None
        via = self._gas_sender(ledger, [ins.sellerStAccount, ins.buyerScAccount])
        await asyncio.gather(  # first trade of a pair only: both approvals in the same block
            ledger.ensure_allowance(ins.sellerStAccount, ins.stToken, ins.stAmount, spender=ledger.dvp),
            ledger.ensure_allowance(ins.buyerScAccount, ins.scToken, ins.scAmount, spender=ledger.dvp))
        terms = dvp_terms(ins)
        entry = (terms, ledger.authorise_dvp(ins.sellerStAccount, terms), ledger.authorise_dvp(ins.buyerScAccount, terms))
        return Prepared(d, ledger, via, encode_call(ATOMIC_DVP, "settle", *entry), entry, expires=ins.deadline,
                        to=ledger.dvp)

    def _seen_preimage(self, st_leg: LegView) -> bytes | None:
        """The ST lock's secret if a claim not yet k blocks deep revealed it (on either chain)."""
        if st_leg.lock is None or not st_leg.active:
            return None
        h = st_leg.lock.hashlock
        return self.sc.index.preimages.get(h) or self.st.index.preimages.get(h)

    def _preimage(self, rec: TradeRecord, view: TradeView | None) -> bytes | None:
        public = (view.sc.preimage or view.st.preimage or view.seen_preimage) if view is not None else None
        if public is not None:
            return public
        sealed = rec.get("secret")
        return self.box.open(sealed, rec.trade_id) if sealed else None
