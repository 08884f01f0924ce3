"""Who does what when several workers share one Redis: account leases (one signer per account, no nonce races),
trade leases with fencing (one driver per trade), the intake stream, and the outbox that routes an action to
the worker that signs for the account it needs."""

from __future__ import annotations

import asyncio
import math
import time

from redis.exceptions import RedisError

from adapters.errors import LedgerError
from relayer import metrics
from relayer.config import Settings
from relayer.follow import ChainSide
from relayer.leases import WORKER_TOKEN, holder_is_dead
from relayer.logging import get_logger
from relayer.store import Store, refuses_writes


INTAKE_MIN, INTAKE_MAX = 16, 1000  # intake stream entries one round reads
ADOPT_EVERY = 1.0  # seconds between two looks for the leases nobody holds while Redis refuses writes (reads of
# every open trade's lease: not every round)

class Coordinator:
    """This worker's share of the accounts and of the open trades."""

    def __init__(self, sides: list[ChainSide], settings: Settings, store: Store) -> None:
        self.sides = sides
        self.settings = settings
        self.store = store
        self.log = get_logger()
        self.accounts_held: set[str] = set()
        self.owned: dict[str, str] = {}  # trade id -> our lease value "token#fence" (the trades we drive)
        self.live_workers = 1
        self.lease_valid_until = float("inf")  # no leases asked yet (single-engine use in tests)
        self._next_scan = 0.0  # monotonic time of the next look for trades nobody drives
        self._share = INTAKE_MIN  # this worker's even share of the open trades, as of the last scan
        self._next_renew = 0.0  # monotonic time the trade leases are renewed next
        # monotonic time since which every write this worker tried was refused (Redis answering reads only:
        # NOREPLICAS, OOM, MISCONF; store.refuses_writes); None once one went through
        self.refusing_since: float | None = None
        # while Redis refuses writes: open trades nobody live holds, decided without writing (_adopt_while_refused)
        self.helping: set[str] = set()
        self._next_adoption = 0.0  # monotonic time of the next look for what nobody holds (while refusing)

    @property
    def accounts(self) -> list[str]:
        """Every account this firm's workers hold a key for, on any chain."""
        return sorted({a for side in self.sides for a in side.ledger.all_senders})

    def sweeps(self) -> bool:
        """One worker sweeps strays: the holder of the first account."""
        accounts = self.accounts
        return bool(accounts) and accounts[0] in self.accounts_held

    async def hold_accounts(self) -> None:
        """Several workers may share one Redis and the same keys: an account lease makes exactly one of them
        the signer of each account (no nonce races). Live workers split the accounts evenly; a lease passes
        on when it lapses, or at once when its holder is a process on this host that has died.

        Redis refusing every write is not a failed round: the accounts held stay held in this worker's view
        (see may_send for what it still sends), and the round goes on with what Redis still answers."""
        try:
            await self._hold_accounts()
        except RedisError as exc:
            if not refuses_writes(exc):
                raise
            self._refused(exc)
            if self.lease_valid_until == float("inf"):
                self.lease_valid_until = float("-inf")  # its first attempt was refused: it never held a lease
            await self._adopt_while_refused()
            return
        self._writes_taken()

    async def _alone(self) -> bool:
        """Every worker token Redis knows (heartbeats are writes, so none has moved or been pruned during the
        refusal) is this worker's or a dead process's of this host: what nobody holds is this worker's to act on
        while Redis refuses writes. With any other worker known, which of them would take it cannot be agreed
        on without a write, so nobody does. Not told apart: two workers both started during one refusal."""
        seen = await self.store.workers_seen(float("-inf"))
        return all(t == WORKER_TOKEN or holder_is_dead(t) for t in seen)

    async def _adopt_while_refused(self) -> None:
        """Redis refuses every write, so nobody can take or renew a lease: a worker started during it (its
        predecessor killed) holds none. If it is alone, the accounts and trades whose lease lapsed or whose
        holder is dead are acted on as if held, for claims and refunds only (may_send; the engine decides these
        trades without writing), until Redis takes writes and the leases are taken as usual."""
        if time.monotonic() < self._next_adoption:
            return
        self._next_adoption = time.monotonic() + ADOPT_EVERY
        try:
            if not await self._alone():
                return
            names = [f"account:{a}" for a in self.accounts]
            current = await self.store.account_lease_holders(names)
            adopted = {n.split(":", 1)[1] for n in names if (holder := current[n]) is None or holder_is_dead(holder)}
            if not adopted <= self.accounts_held:
                self.log.warning("accounts_adopted_while_redis_refuses_writes", accounts=sorted(adopted - self.accounts_held))
                self.accounts_held = self.accounts_held | adopted
                for side in self.sides:
                    await side.ledger.set_active(self.accounts_held)
            open_ids = [t for t in await self.store.open_trades() if t not in self.owned]
            holders = await self.store.trade_lease_holders(open_ids)
            self.helping = {t for t, h in holders.items() if h is None or holder_is_dead(h.split("#", 1)[0])}
        except RedisError as exc:  # Redis stopped answering reads too: nothing is adopted this time
            self.log.warning("adoption_failed", error=str(exc), error_type=type(exc).__name__)

    def refused_now(self) -> None:
        """A write elsewhere (a trade's decision) found Redis refusing every write."""
        self._refused(None)

    def _refused(self, exc: RedisError | None) -> None:
        if self.refusing_since is None:
            self.refusing_since = time.monotonic()
            metrics.REDIS_REFUSING_WRITES.set(1)
            self.log.warning("redis_refusing_writes", error=str(exc).split("caused error: ")[-1] if exc else None,
                             held=sorted(self.accounts_held),
                             acting="claims and refunds only, on the accounts held; nothing new is started")

    def _writes_taken(self) -> None:
        if self.refusing_since is not None:
            self.log.info("redis_takes_writes_again", refused_s=round(time.monotonic() - self.refusing_since, 1))
            self.refusing_since = None
            self.helping = set()
            metrics.REDIS_REFUSING_WRITES.set(0)

    async def may_send(self, account: str, needs_no_record: bool) -> bool:
        """Whether this worker may sign for `account` now. While Redis refuses writes, only a claim or a refund.
        Within its lease (as last renewed), yes. Past it, only
        an action that needs nothing written (a claim, a refund: what it does is fixed by the lock on chain, so
        a second sender could only waste gas or a nonce) on an account this worker held when Redis began
        refusing writes, and only while it still refuses them: taking a lease is a write, so no other worker
        can have taken this one. A write right before the send checks that; once one goes through, the leases
        are held as usual first. Not covered: Redis taking writes only between two of this worker's attempts
        (a round or TTL/4 apart) while another worker takes the lease, then refusing again."""
        if self.refusing_since is not None and not needs_no_record:
            return False  # nothing new starts while Redis cannot record it
        if time.monotonic() <= self.lease_valid_until:
            return True
        if self.refusing_since is None or account not in self.accounts_held:
            return False
        try:
            await self.store.heartbeat(WORKER_TOKEN, self.settings.lease_ttl)
        except RedisError as exc:
            return refuses_writes(exc)  # refused: still nobody's to take; down or unknown: not sending
        await self.hold_accounts()
        return account in self.accounts_held and time.monotonic() <= self.lease_valid_until

    async def _hold_accounts(self) -> None:
        accounts = self.accounts
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
        self.lease_valid_until = asked + 0.8 * self.settings.lease_ttl
        if mine != self.accounts_held:
            self.log.info("account_leases", held=sorted(mine), lost=sorted(self.accounts_held - mine),
                          live_workers=self.live_workers)
        self.accounts_held = mine
        for side in self.sides:
            await side.ledger.set_active(mine)

    async def renew_trades(self) -> None:
        """Renew the leases of the trades we drive; forget any that passed to another worker."""
        if not self.owned:
            return
        held = dict(self.owned)
        values = await self.store.hold_trade_leases(list(held), WORKER_TOKEN, int(self.settings.lease_ttl * 1000))
        for tid, value in values.items():
            if value == held[tid]:
                continue
            if value.startswith(WORKER_TOKEN + "#") and tid in self.owned:
                # it had lapsed (renewals refused or late) and nobody took it: ours again under a new fence (state
                # writes are compare-and-set on the version too, so whatever happened meanwhile is re-read)
                self.owned[tid] = value
                continue
            self.owned.pop(tid, None)
            self.log.info("trade_lease_lost", trade_id=tid)

    def _busy(self, account: str) -> bool:
        return any(s.in_flight for side in self.sides
                   if (s := side.ledger.all_senders.get(account)) is not None)

    async def own_trades(self) -> dict[str, str]:
        """The trades this worker drives: new ones from the intake stream (consumer group), ones whose driver
        died (lease lapsed, or its process on this host is gone), up to an even share of the open trades.
        Each lease carries a fencing number; state writes check it (see Store.update). While Redis refuses
        writes (reading the stream and renewing a lease are writes): the ones it drove, nothing new."""
        try:
            return await self._own_trades()
        except RedisError as exc:
            if not refuses_writes(exc):
                raise
            self._refused(exc)
            return self.owned

    async def _own_trades(self) -> dict[str, str]:
        ttl_ms = int(self.settings.lease_ttl * 1000)
        if time.monotonic() >= self._next_renew:
            self._next_renew = time.monotonic() + self.settings.lease_ttl / 4
            await self.renew_trades()
        # new trades from the stream up to this worker's share (a bulk of 500 is taken in one round, not 16 a
        # round), never fewer than INTAKE_MIN so a worker at its share still takes what arrives
        room = min(INTAKE_MAX, max(INTAKE_MIN, self._share - len(self.owned)))
        entries = await self.store.read_intake(WORKER_TOKEN, count=room, min_idle_ms=ttl_ms)
        candidates = {tid for _, tid in entries}
        dead: dict[str, str] = {}
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + min(1.0, self.settings.lease_ttl / 4)
            open_ids = await self.store.open_trades(settled_for=1.0)
            others = [t for t in open_ids if t not in candidates and t not in self.owned]
            share = math.ceil(await self.store.count_open() / self.live_workers)
            self._share = share + INTAKE_MAX // max(1, self.live_workers)  # room for what arrives until the next scan
            room = max(0, share - len(candidates) - len(self.owned))
            for tid, holder in (await self.store.trade_lease_holders(others)).items():
                if room <= 0:
                    break
                if holder is None or holder_is_dead(holder.split("#", 1)[0]):
                    candidates.add(tid)
                    room -= 1
                    if holder is not None:
                        dead[tid] = holder
        new = sorted(candidates - set(self.owned))  # ours are renewed every TTL/4, not every round
        values = await self.store.hold_trade_leases(new, WORKER_TOKEN, ttl_ms, dead=dead) if new else {}
        self.owned = dict(self.owned) | {t: v for t, v in values.items() if v.startswith(WORKER_TOKEN + "#")}
        metrics.OWNED_TRADES.set(len(self.owned))
        await self.store.ack_intake([eid for eid, _ in entries])
        return self.owned

    async def routed_to_us(self, limit: int = 200) -> list[str]:
        """Trades other workers routed here because a due action needs an account we sign for."""
        if not self.accounts_held:
            return []
        try:
            return list(dict.fromkeys(await self.store.take_routed(sorted(self.accounts_held), limit)))
        except RedisError as exc:  # taking from an outbox is a write: while Redis refuses them, they wait there
            if not refuses_writes(exc):
                raise
            self._refused(exc)
            return []

    async def route(self, account: str, trade_id: str) -> bool:
        """Hand a trade to the worker that signs for `account` (its outbox); False if it is routed already."""
        return bool(await self.store.route(account, trade_id, ttl_ms=2000))

    async def finished(self, trade_id: str) -> None:
        """A trade we drove is terminal: its lease goes back at once."""
        value = self.owned.pop(trade_id, None)
        if value is not None:
            try:
                await self.store.release_trade_leases({trade_id: value})
            except RedisError as exc:
                if not refuses_writes(exc):
                    raise  # refused: the lease lapses after its TTL instead

    def lost(self, trade_id: str) -> None:
        """Another worker took the trade over (our fence is stale): stop acting on it."""
        self.owned.pop(trade_id, None)

    async def keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the account leases on their own timer, so a slow round (a node timing out) cannot let them
        lapse while this worker is alive."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.lease_ttl / 4)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.hold_accounts()
                if self.refusing_since is None:
                    self._next_renew = time.monotonic() + self.settings.lease_ttl / 4
                    await self.renew_trades()
            except (RedisError, LedgerError, OSError) as exc:
                self.log.warning("lease_renewal_failed", error=str(exc))

    async def release(self) -> None:
        """On shutdown: hand accounts and trades to the other workers at once instead of after the TTL."""
        await self.store.release_leases([f"account:{a}" for a in self.accounts], WORKER_TOKEN)
        await self.store.release_trade_leases(self.owned)
        self.owned = {}
        await self.store.leave(WORKER_TOKEN)
