"""The engine composes the parts of a worker and runs its rounds; each part has one job:

- `follow.Followers`: k-confirmed escrow events of every chain into its index (reorg rewinds, cursors);
- `coordination.Coordinator`: account and trade leases, the intake stream, the outbox between workers;
- `intake.Intake`: admission of signed instructions;
- `driver.Driver`: one trade: view of both legs → `protocol.rules.decide()` → persisted state, actions due;
- `executor.Executor`: due actions → checked, batched, sent, recorded;
- `janitor.Janitor`: strays and late locks refunded, finished trades archived and forgotten;
- `read_model.ReadModel`: what the API shows (trades, chain clocks, readiness).

Intent is written before side effects (the sealed secret, its hashlock and T_st are in Redis before the ST
lock is broadcast), and a restart re-derives everything from the chains, so a crash at any line resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from adapters.errors import LedgerError, RpcUnavailable
from adapters.evm import HeadWatcher
from relayer import metrics
from relayer.config import DEVNET_CHAIN_IDS, Settings
from relayer.coordination import Coordinator
from relayer.driver import Driver, Quarantine, Round
from relayer.errors import ConcurrentUpdate, ConfigError, CorruptRecord, FencedOut
from relayer.executor import NEED_NO_RECORD, Executor
from relayer.follow import FOLLOW_BUDGET, ChainSide, Followers
from relayer.authorizations import HolderLocks, SettlementAuthorizations
from relayer.intake import Intake
from relayer.janitor import SWEEP_EVERY, Janitor
from relayer.strays import StrayBook
from relayer.actions import Due
from relayer.leases import ACTOR, WORKER_TOKEN
from relayer.logging import OutageLog, get_logger
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.rules import Action
from relayer.protocol.states import TERMINAL, TradeState
from relayer.operator import REQUESTS_EVERY, OperatorDesk
from relayer.read_model import ReadModel
from relayer.routing import Routes
from relayer.schedule import Schedule, next_instants
from relayer.secrets import SecretBox
from relayer.store import Store, TradeRecord, refuses_writes
from relayer.webhooks import WebhookSender, queue_alerts

PRUNE_EVERY_ROUNDS = 200
# trades decided concurrently in a round (their Redis writes overlap; decide() itself is CPU): half the Redis pool,
# so lease renewals and the executor's checks still find connections
DECIDE_AT_ONCE = 32
REFUSED_RETRY = 1.0  # seconds before a trade whose decision Redis refused to record is decided (and written) again


class Engine:
    """Drives every open trade to SETTLED or ABORTED."""

    def __init__(self, settings: Settings, store: Store, sides: list[ChainSide], box: SecretBox) -> None:
        self.settings = settings
        self.store = store
        self.box = box
        self.sides = sides
        self.routes = Routes(sides, settings)
        self.log = get_logger()
        self.started = False
        self.rounds = 0
        self.clock_offset = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self.followers = Followers(sides, settings, store, self._in_background)
        self.coordinator = Coordinator(sides, settings, store)
        self.operator = OperatorDesk(store)
        store.webhooks = store.webhooks or bool(settings.webhook_url)
        self.webhooks = WebhookSender(store, settings.webhook_url, settings.webhook_secret.get_secret_value(),
                                      WORKER_TOKEN, settings.webhook_max_attempts, settings.webhook_timeout
                                      ) if settings.webhook_url else None
        self.intake_desk = Intake(self.routes, settings, store, ready=lambda: self.started,
                                  gate=self.operator.check_intake_open)
        holders = settings.holder_accounts()
        self.executor = Executor(self.routes, settings, store, box, self.coordinator, holders)
        strays = StrayBook(store)
        self.janitor = Janitor(sides, settings, store, strays, self._in_background)
        self.driver = Driver(self.routes, store, box, strays, self.executor.in_flight, holders)
        self.driver.reread = self.followers.reread
        self.quarantine = Quarantine()
        self.schedule = Schedule()
        self.holder_locks = HolderLocks(self.routes, store, holders, on_accepted=self.schedule.mark)
        self.executor.on_settled = self._action_done
        self.driver.reveals.wake = lambda tid, after: self.schedule.mark_at(tid, time.monotonic() + after)
        self._states: dict[str, str] = {}  # trade id -> state, for the trades this worker drives
        self._helped: set[str] = set()  # trades nobody holds, decided without writing while Redis refuses writes
        self._fresh: tuple[bool, ...] = ()
        self._skew_ok: tuple[bool, ...] = ()
        settlements = SettlementAuthorizations(self.routes, store, on_accepted=self.schedule.mark)
        self.read_model = ReadModel(store, self.intake_desk, self.routes, self.holder_locks, settlements,
                                    self.operator)
        self._next_sweep = 0.0
        self._next_requests = 0.0  # when to look for operators' re-drive and sweep requests again
        self._sweep_request: dict[str, Any] | None = None  # a requested sweep not run yet

    @property
    def st(self) -> ChainSide:
        """The first ST ledger (the only one without a config file)."""
        return self.routes.of_role("st")[0]

    @property
    def sc(self) -> ChainSide:
        """The first coin ledger (the only one without a config file)."""
        return self.routes.of_role("sc")[0]

    # ------------------------------------------------------------------ intake (the API's entry points)

    async def validate(self, signed: SignedInstruction) -> None:
        await self.intake_desk.check(signed)

    async def intake(self, signed: SignedInstruction) -> bool:
        """Validate and store a signed instruction. True if new, False if the same one was already accepted."""
        return await self.intake_desk.accept(signed)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect to the chains and place each follower where no open trade's events can be missed.

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
        if indexed := await self.store.index_states():  # once per Redis: trades written before the state index
            self.log.info("state_index_built", trades=indexed)
        await self._start_ledgers()
        self.started = True
        self.log.info("engine_started", ledgers={s.name: s.chain_id for s in self.sides})
        self._warn_raw_keys()

    async def _start_ledgers(self) -> None:
        """Start every ledger at once. Once one has started, the others get FOLLOW_BUDGET more; one still not
        answering (a hung node waits for the request timeout, with retries) is left to the rounds, which start
        it when it answers, so it never holds up the trades on the other ledgers. Fails if none started, or at
        once on a ConfigError (the wrong chain behind a URL is not waited for)."""
        tasks = {asyncio.create_task(self._start_ledger(side)): side for side in self.sides}
        pending: set[asyncio.Task[None]] = set(tasks)
        errors: list[BaseException] = []
        started = 0
        loop, deadline = asyncio.get_running_loop(), None  # deadline: once one ledger started
        timeout: float | None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                fatal = None
                for task in done:  # every finished one looked at, so none leaves its exception unretrieved
                    exc = task.exception()
                    if exc is None:
                        started += 1
                        deadline = deadline or loop.time() + FOLLOW_BUDGET
                    elif isinstance(exc, (LedgerError, OSError)):
                        errors.append(exc)
                        self.log.warning("chain_not_started", chain=tasks[task].name, error=str(exc))
                    else:
                        fatal = fatal or exc
                if fatal is not None:
                    raise fatal
        finally:
            for task in pending:
                task.cancel()
                self.log.warning("chain_not_started", chain=tasks[task].name, error="slow: left to the rounds",
                                 budget_s=FOLLOW_BUDGET)
            await asyncio.gather(*pending, return_exceptions=True)
        if not started:
            raise errors[0]

    async def _start_ledger(self, side: ChainSide) -> None:
        await self.followers.start_side(side)
        for token in side.config.token_set():  # each token's kind, once: fixed gas for known ones
            await side.ledger.rules.rules(token)

    def _warn_raw_keys(self) -> None:
        """Raw keys in the environment are for a devnet: say so loudly when they sign for a chain that is not one."""
        raw = sorted(a for a, signer in self.settings.accounts().items() if getattr(signer, "kind", "") == "env")
        real = sorted({s.chain_id for s in self.sides if s.chain_id is not None and s.chain_id not in DEVNET_CHAIN_IDS})
        if raw and real:
            self.log.warning("raw_keys_on_a_real_chain", accounts=raw, chain_ids=real,
                             hint="move these keys into an HSM (pkcs11:) or a keystore (keystore:); see DVP_SIGNERS")

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
            asyncio.create_task(HeadWatcher(side.name, side.config.ws_url, wake, side.ledger.chain.auth_headers).run(stop))
            for side in self.sides if side.config.ws_url
        ]
        watchers.append(asyncio.create_task(self.coordinator.keep_leases(stop)))
        if self.webhooks is not None:
            watchers.append(asyncio.create_task(self.webhooks.run(stop)))
        waiter = asyncio.create_task(stop.wait())
        outage = OutageLog(self.log, "round_failed")
        while not stop.is_set():
            wake.clear()
            try:
                await self.step()
                outage.ok_now(time.monotonic())
            except (LedgerError, RedisError, OSError) as exc:  # a chain or Redis is down: the next round retries
                outage.failed_now(exc, time.monotonic())
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
        for side in self.sides:
            if side.following is not None:
                side.following.cancel()
                watchers.append(side.following)
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.drain()
        try:
            await self.store.add_audits([])  # what was audited while Redis refused writes, if it takes them now
            await self.coordinator.release()  # a standby takes over at once instead of after the TTL
        except RedisError:
            pass

    async def drain(self, timeout: float = 30.0) -> None:
        tasks: list[asyncio.Task[Any]] = [*self.executor.tasks(), *self._background, *self.followers.pending(),
                                          *self.driver.reveals.pending()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _in_background(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ one round

    async def step(self) -> None:
        """Follow the chains, decide the trades whose view changed (see relayer/schedule.py) among those this
        worker drives or was routed, send what is due."""
        await self.coordinator.hold_accounts()
        if self.coordinator.refusing_since is None and self.store.audits_kept:
            # what was audited while Redis refused writes, now that it takes them (kept again if it refuses again)
            await self.store.add_audits([], keep_if_refused=True)
        fresh = tuple(await self.followers.follow_all())
        if not any(fresh):
            raise RpcUnavailable("no chain answers: nothing can be decided this round")
        touched, rewound = self.followers.take_changes()
        self._after_deep_reorgs()
        rnd = Round({side.name: side.now() for side in self.sides}, time.monotonic())
        offsets = [rnd.offset(route) for route in self.routes.pairs()]
        skew_ok = tuple(abs(o) <= self.settings.max_clock_skew for o in offsets)
        if rewound or fresh != self._fresh or skew_ok != self._skew_ok:
            # a chain came back, went stale or was rewound, or the clocks moved in or out of the skew bound
            # (locks and the reveal wait on it): every trade may decide differently
            self.schedule.mark_all()
        self._fresh, self._skew_ok = fresh, skew_ok
        for tid in touched:
            self.schedule.mark(tid)
        self.clock_offset = max(offsets, key=abs, default=0)  # the pair of chains furthest apart
        metrics.CLOCK_OFFSET.set(self.clock_offset)
        owned = await self.coordinator.own_trades()
        try:
            await self._operator_requests(owned)
        except RedisError as exc:  # carrying one out is a write: asked again once Redis takes writes
            if not refuses_writes(exc):
                raise
        for tid in owned:
            if tid not in self._states:
                self.schedule.mark(tid)  # newly ours (intake, or taken over from a dead worker)
                self._states[tid] = ""
        for tid in [t for t in self._states if t not in owned]:
            self._drop(tid)  # passed to another worker
        routed = await self.coordinator.routed_to_us()
        helping = [t for t in self.coordinator.helping if t not in owned]  # only while Redis refuses writes
        for tid in set(helping) - self._helped:
            self.schedule.mark(tid)
        for tid in self._helped - set(helping) - set(owned):
            self.schedule.forget(tid)
            self.driver.forget(tid)
        self._helped = set(helping)
        now = time.monotonic()
        ids = self.schedule.take(list(owned) + helping) + [t for t in routed if t not in owned]
        for tid in [t for t in ids if self.quarantine.held(t, now)]:
            self.schedule.mark_at(tid, self.quarantine.until(tid))  # what woke it waits for the pause's end
        ids = [t for t in ids if not self.quarantine.held(t, now)]
        try:
            await self._decide(ids, owned, rnd)
        except BaseException:
            for tid in ids:  # the round failed part way: what it took is decided again next round
                if tid in self._states or tid in routed:
                    self.schedule.mark(tid)
            for tid, _, _, what in rnd.alerts:  # and the alerts it raised but did not queue are raised again
                self.driver.unreport(tid, what)
            raise
        self.rounds += 1

    def _after_deep_reorgs(self) -> None:
        """The janitor reads again, in the background, the locks of trades finished lately on a ledger a deep
        reorg rewound (thousands of slot reads must not hold the round); one that fails is tried again."""
        for name in sorted(self.followers.deep_reorged):
            self.followers.deep_reorged.discard(name)
            self._in_background(self._recheck_finished(name))

    async def _recheck_finished(self, name: str) -> None:
        try:
            await self.janitor.after_deep_reorg(self.routes.by_name[name])
        except (LedgerError, RedisError, OSError) as exc:
            self.log.warning("deep_reorg_recheck_failed", chain=name, error=str(exc), error_type=type(exc).__name__)
            self.followers.deep_reorged.add(name)

    async def _decide(self, ids: list[str], owned: dict[str, str], rnd: Round) -> None:
        """Decide these trades, run the janitor when due, export metrics, send what is due."""
        broken: dict[str, CorruptRecord] = {}
        due: list[Due] = []
        records = await self.store.get_many(ids, broken=broken)
        for start in range(0, len(records), DECIDE_AT_ONCE):  # each trade's Redis round trips overlap the others'
            outcomes = await asyncio.gather(*(self._decide_one(rec, owned, rnd) for rec in
                                              records[start:start + DECIDE_AT_ONCE]), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome  # an outage (chain, Redis): the round fails and is retried
            # a claim close to its timelock goes out with its batch, not after every other open trade was decided
            # (a reconciliation of hundreds of trades after an outage); the rest go together, in fuller batches
            batch_due = [d for outcome in outcomes for d in outcome]  # type: ignore[union-attr]
            racing = [self._racing(d) for d in batch_due]
            self.executor.dispatch([d for d, r in zip(batch_due, racing) if r])
            due += [d for d, r in zip(batch_due, racing) if not r]
        for tid, corrupt in broken.items():
            await self._set_aside(tid, corrupt)
        self.executor.dispatch(due)  # before the sweep: its chain reads must not hold the trades' actions back
        try:  # claims a reorg deeper than k took out (rare; nothing read when there are none): every round
            self.executor.dispatch(await self.janitor.reclaims_due(rnd.observed_at))
        except (LedgerError, RedisError, OSError) as exc:  # an outage: asked again next round
            self.log.warning("reclaims_failed", error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug in this rare path must not stop every trade's round
            self.log.exception("reclaims_crashed", error=str(exc))
        if self.coordinator.sweeps() and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY
            try:
                refunds_due = await self.janitor.sweep(rnd.observed_at)
            except (LedgerError, RedisError, OSError) as exc:  # the sweep retries; the trades' actions went out
                self.log.warning("sweep_failed", error=str(exc), error_type=type(exc).__name__)
            else:
                self.executor.dispatch(refunds_due)
                if self._sweep_request is not None:  # an operator asked for this one: say what it found
                    refunds = sum(d.action in (Action.REFUND_ST, Action.REFUND_SC) for d in due + refunds_due)
                    await self.operator.swept(self._sweep_request, refunds, len(ids))
                    self._sweep_request = None
        if self.rounds % PRUNE_EVERY_ROUNDS == 0:
            await self.janitor.prune_index()
        await self._export(rnd)

    def _racing(self, d: Due) -> bool:
        """A claim whose lock expires within 2Δ: every second it waits for other trades' decisions counts."""
        lock = d.lock
        if d.action not in (Action.CLAIM_ST, Action.CLAIM_SC) or lock is None:
            return False
        route = self.routes.route(d.rec.signed.instruction)  # decided this round: its route is known
        side = route.st if d.action is Action.CLAIM_ST else route.sc
        return lock.timelock - side.now() <= 2 * route.policy.delta()

    async def _decide_one(self, rec: TradeRecord, owned: dict[str, str], rnd: Round) -> list[Due]:
        """One trade's decision and what it makes due; raises only for an outage (LedgerError, RedisError,
        OSError): a bug or bad data in this trade sets it aside, and the other trades go on."""
        if rec.state in TERMINAL:  # finished elsewhere (another worker, an operator's cancel)
            await self.coordinator.finished(rec.trade_id)
            self._finished(rec)
            return []
        metrics.DECISIONS.inc()
        try:
            advanced = await self.driver.advance(rec, rnd, fence=owned.get(rec.trade_id))
        except FencedOut:
            self.coordinator.lost(rec.trade_id)  # another worker took it over: stop acting on it
            self._drop(rec.trade_id)
            return []
        except ConcurrentUpdate:
            self.schedule.mark(rec.trade_id)  # another worker moved it: next round re-reads
            return []
        except RedisError as exc:
            if not refuses_writes(exc):
                raise
            # Redis refuses every write and this decision needed one before its action (a secret, a plan):
            # nothing new starts; decided again once Redis may take writes
            self.coordinator.refused_now()
            self.schedule.mark_at(rec.trade_id, time.monotonic() + REFUSED_RETRY)
            return []
        except (LedgerError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or bad data in ONE trade: set it aside, go on
            await self._set_aside(rec.trade_id, exc)
            return []
        self.quarantine.clear(rec.trade_id)
        if advanced.unrecorded == "refused":
            self.coordinator.refused_now()
        refusing = self.coordinator.refusing_since is not None
        if advanced.unrecorded and not refusing:
            # Redis takes writes and the trade's lease lapsed: another worker may take it now (a FencedOut)
            self.coordinator.lost(rec.trade_id)
            self._drop(rec.trade_id)
            return []
        if refusing and (advanced.unrecorded or rec.trade_id not in owned):
            # decided again soon, which writes what this decision could not (a trade nobody holds,
            # Coordinator._adopt_while_refused, is decided without writing)
            self.schedule.mark_at(rec.trade_id, time.monotonic() + REFUSED_RETRY)
        elif advanced.finished:
            self._finished(rec)
            await self.coordinator.finished(rec.trade_id)
        elif rec.trade_id in owned:
            self._states[rec.trade_id] = rec.state.value
            self._set_timer(rec, rnd)
        # while Redis refuses every write only the claims and refunds go out (Coordinator.may_send): nothing new
        return [d for d in advanced.due if not refusing or d.action in NEED_NO_RECORD]

    async def _operator_requests(self, owned: dict[str, str]) -> None:
        """Carry out the operators' re-drives of the trades this worker drives, and a requested refund sweep when
        this worker sweeps (relayer/operator.py). Looked for once a second: one Redis round trip."""
        if time.monotonic() < self._next_requests:
            return
        self._next_requests = time.monotonic() + REQUESTS_EVERY
        redrive, sweep = await self.operator.pending_requests()
        for tid in redrive:
            if tid not in owned:
                continue  # the worker driving it does it
            rec = await self.store.get(tid)
            if rec is None or rec.state in TERMINAL:
                await self.operator.drop_redrive(tid)
                continue
            route = self.routes.route(rec.signed.instruction)
            reread: dict[str, int] = {}
            for side, role in ((route.st, "st"), (route.sc, "sc")):
                reread.setdefault(side.name, rec.get_int(f"{role}_from_block") or side.config.start_block)
            for name, start in reread.items():
                self.followers.reread(name, start, force=True)
            self.quarantine.clear(tid)
            self.schedule.mark(tid)
            await self.operator.redriven(tid, ACTOR, reread)
            self.log.info("trade_redriven", trade_id=tid, reread=reread)
        if sweep is not None and self.coordinator.sweeps() and self._sweep_request is None:
            self._sweep_request = sweep
            self._next_sweep = 0.0
            self.schedule.mark_all()

    def _set_timer(self, rec: TradeRecord, rnd: Round) -> None:
        """Wake the trade at the next instant its decision may change with no new event (schedule.py)."""
        route = self.routes.route(rec.signed.instruction)
        instants = next_instants(rec, route.policy)
        clocks = (rnd.now(route.st), rnd.now(route.sc))
        # each instant as seen from either chain's clock, the sooner wins: a wake-up too early only decides once more
        delays: list[float] = [t - now for now in clocks for t in instants if t > now]
        heads = min(route.st.head_timestamp, route.sc.head_timestamp)
        if any(heads < t <= max(clocks) for t in instants):
            # passed by the projected clock but no block stamped past it yet (expiry and refunds wait for one):
            # look again a block later; that block is no escrow event, so nothing else would wake the trade
            delays.append(max(route.st.block_time, route.sc.block_time))
        if delays:
            self.schedule.mark_at(rec.trade_id, rnd.observed_at + min(delays))

    def _action_done(self, trade_ids: list[str], retry_at: float | None) -> None:
        """An action's transaction finished (or failed): decide its trades again, now or after the cooldown."""
        for tid in trade_ids:
            if retry_at is None:
                self.schedule.mark(tid)
            else:
                self.schedule.mark_at(tid, retry_at)

    def _drop(self, trade_id: str) -> None:
        self._states.pop(trade_id, None)
        self.schedule.forget(trade_id)
        self.driver.forget(trade_id)  # passed to another worker: its in-memory traces here go too

    def _finished(self, rec: TradeRecord) -> None:
        """Forget a terminal trade's in-memory traces (memory stays flat); the janitor archives it."""
        self._drop(rec.trade_id)
        self.driver.forget(rec.trade_id)
        self.executor.forget(rec.trade_id)
        self.store.forget_parsed(rec)
        self.janitor.finished(rec)

    async def _set_aside(self, trade_id: str, exc: Exception) -> None:
        """Errors are isolated per trade: logged with the traceback once, counted, audited, retried later."""
        pause = self.quarantine.add(trade_id, time.monotonic())
        self.schedule.mark_at(trade_id, time.monotonic() + pause)
        kind = type(exc).__name__
        metrics.TRADE_ERRORS.labels(kind).inc()
        if isinstance(exc, CorruptRecord):
            self.log.error("trade_quarantined", trade_id=trade_id, error_type=kind, error=str(exc), retry_in=pause)
        else:
            self.log.exception("trade_quarantined", trade_id=trade_id, error_type=kind, error=str(exc),
                               retry_in=pause, exc_info=exc)
        if pause == Quarantine.FIRST:  # the first failure of a series is audited on the trade
            try:
                await self.store.add_audit(trade_id, ACTOR, "quarantined", error_type=kind, retry_in=pause)
            except RedisError:
                pass

    async def _export(self, rnd: Round) -> None:
        if self.webhooks is not None:  # first: a metric Redis cannot count must not cost an alert
            await queue_alerts(self.store, rnd.alerts, self.driver.unreport, self.log)
            rnd.alerts.clear()  # queued, or handed back to be raised again: the round's failure cannot double them
        counts = Counter(self._states.values())
        for state in TradeState:
            if state not in TERMINAL:
                metrics.TRADES.labels(state.value).set(counts.get(state.value, 0))
        for terminal, n in (await self.store.terminal_counts()).items():
            metrics.TRADES.labels(terminal).set(n)
        for leg, left in rnd.min_left.items():
            metrics.TIMELOCK_MIN_LEFT.labels(leg).set(left)
        for leg, near in rnd.claims_due_near.items():
            metrics.CLAIMS_DUE_NEAR.labels(leg).set(near)
        metrics.INTAKE_PAUSED.set(1 if await self.operator.intake_pause() is not None else 0)
