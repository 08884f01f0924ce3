"""Due actions to transactions: each checked against the chain right before sending, grouped into batches (one
kind, one chain, one signing account), sent, waited for and recorded; cooldowns so a failed action is not
retried every round, and routing of an action whose account another worker signs for."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from adapters.errors import LedgerError, LeaseLost, TransactionReverted
from adapters.evm import TxSender
from adapters.htlc import HtlcLedger
from relayer import metrics
from relayer.actions import Due, DueKey, NeedsAccount, Prepared, dvp_terms
from relayer.authorizations import kept_dvp_signature, stored_authorization
from relayer.config import Settings
from relayer.coordination import Coordinator
from relayer.follow import ChainSide
from relayer.leases import ACTOR
from relayer.logging import get_logger
from relayer.protocol.rules import Action, sc_timelock_for
from relayer.routing import Routes
from relayer.secrets import SecretBox
from relayer.store import Store


FORGET_BATCH = 256  # finished trades forgotten in one sweep of the executor's maps
PREPARE_AT_ONCE = 32  # batch entries checked concurrently (each may write its plan to Redis)
BLOCK_SHARE = 0.5  # the most of a block one batch may fill: room for other accounts' batches and other senders
_ST_SIDE = frozenset({Action.LOCK_ST, Action.CLAIM_ST, Action.REFUND_ST, Action.SETTLE_DVP})
# what may still go out while Redis refuses every write (Coordinator.may_send): the claims and refunds, whose effect
# the lock on chain fixes and whose intent (the secret) is already kept; a lock or a settlement starts something new
NEED_NO_RECORD = frozenset({Action.CLAIM_ST, Action.CLAIM_SC, Action.REFUND_ST, Action.REFUND_SC})


def _trades_named(prepared: list[Prepared]) -> dict[str, Any]:
    """The log fields naming the trades of one transaction: trade_id for one, trade_ids for a batch."""
    if len(prepared) == 1:
        return {"trade_id": prepared[0].due.rec.trade_id}
    return {"trade_ids": [p.due.rec.trade_id for p in prepared]}


class Executor:
    """Sends what the driver and the janitor found due; at most one transaction in flight per (trade, action,
    lock)."""

    def __init__(self, routes: Routes, settings: Settings, store: Store, box: SecretBox,
                 coordinator: Coordinator, holders: frozenset[str] = frozenset()) -> None:
        self.routes = routes
        self.holders = holders  # accounts whose locks are sent from their holders' authorisations
        self.settings = settings
        self.store = store
        self.box = box
        self.coordinator = coordinator
        self.log = get_logger()
        self.inflight: dict[DueKey, asyncio.Task[None]] = {}
        self.entry_gas: dict[tuple[str, str], float] = {}  # (chain, kind) -> measured gas per batch entry
        self.not_before: dict[DueKey, float] = {}  # cooldown after a failure or a send, by Due.key
        self._withheld: dict[str, str] = {}  # trade id -> why its reveal is held back (logged once per reason)
        self._reveal_ok: dict[DueKey, bool] = {}  # due -> the ST claim would succeed now (set just before prepare)
        self._forgotten: set[str] = set()  # finished trades whose entries the next sweep drops
        self._preparing = asyncio.Semaphore(PREPARE_AT_ONCE)  # a batch's checks share the Redis and RPC pools
        # told when an action's transaction is over: (trade ids, None = decide now | monotonic time to retry at)
        self.on_settled: Callable[[list[str], float | None], None] = lambda ids, at: None

    def in_flight(self, key: DueKey) -> bool:
        task = self.inflight.get(key)
        return task is not None and not task.done()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in self.inflight.values() if not t.done()]

    def forget(self, trade_id: str) -> None:
        """Drop a finished trade's cooldowns and finished tasks (memory stays flat). Swept once per FORGET_BATCH
        finished trades: a sweep for each one cost a pass over every open trade's entries."""
        self._forgotten.add(trade_id)
        if len(self._forgotten) >= FORGET_BATCH:
            self._sweep_forgotten()

    def _sweep_forgotten(self) -> None:
        gone, self._forgotten = self._forgotten, set()
        self.not_before = {k: v for k, v in self.not_before.items() if k[0] not in gone}
        self._withheld = {k: v for k, v in self._withheld.items() if k.split(":")[0] not in gone}  # id, id:leg
        self._reveal_ok = {k: v for k, v in self._reveal_ok.items() if k[0] not in gone}
        for key in [k for k, t in self.inflight.items() if k[0] in gone and t.done()]:
            del self.inflight[key]

    def dispatch(self, due: list[Due]) -> None:
        """Start the due actions that are not already in flight, grouped so that actions of one kind, on one
        chain, signed by one account go out as one batch transaction (sized by gas, see batch_size)."""
        now = time.monotonic()
        for key in [k for k, t in self.inflight.items() if t.done()]:
            del self.inflight[key]
        groups: dict[tuple[str, str, str], list[Due]] = defaultdict(list)
        for d in due:
            if self.in_flight(d.key):
                continue  # its end will wake the trade
            if now < (until := self.not_before.get(d.key, 0.0)):
                self.on_settled([d.rec.trade_id], until)
                continue
            groups[self._group_key(d)].append(d)
        for items in groups.values():
            size = self.batch_size(items[0])
            for i in range(0, len(items), size):
                chunk = items[i:i + size]
                task = asyncio.create_task(self._act(chunk))
                for d in chunk:
                    self.inflight[d.key] = task

    def side_of(self, d: Due) -> ChainSide:
        """The ledger an action is sent to: the trade's ST chain or coin ledger, or where a stray lock is."""
        if d.chain:
            return self.routes.by_name[d.chain]
        route = self.routes.route(d.rec.signed.instruction)
        return route.st if d.action in _ST_SIDE else route.sc

    def batch_size(self, d: Due) -> int:
        """Entries per batch: what fits in BLOCK_SHARE of the chain's block gas limit at the gas an entry was
        measured to take (the worst case before any), capped by DVP_BATCH_MAX."""
        side = self.side_of(d)
        per_entry = self.entry_gas.get((side.name, d.kind)) or side.ledger.batch_entry_gas(d.kind)
        limit = side.gas_limit or 30_000_000
        return max(1, min(self.settings.batch_max, int(limit * BLOCK_SHARE // per_entry)))

    def _measured(self, chain: str, kind: str, gas_used: int, entries: int) -> None:
        """Learn the gas per batch entry from a receipt (moving average, leaning to the higher)."""
        if entries < 2:
            return
        seen = gas_used / entries
        old = self.entry_gas.get((chain, kind))
        self.entry_gas[(chain, kind)] = seen if old is None else max(seen, 0.8 * old + 0.2 * seen)

    def _group_key(self, d: Due) -> tuple[str, str, str]:
        """One batch: one ledger, one kind, one signing account (a lock is signed by its party)."""
        ins = d.rec.signed.instruction
        side = self.side_of(d)
        chain = f"{side.name}:dvp" if d.action is Action.SETTLE_DVP else side.name
        if self._holder_of(d) is not None:
            return (chain, "lock-signed", d.rec.trade_id)  # lockWithSig has no batch form: one call each
        if d.action is Action.LOCK_ST:
            return (chain, d.kind, ins.sellerStAccount)
        if d.action is Action.LOCK_SC:
            return (chain, d.kind, ins.buyerScAccount)
        prefer = [ins.sellerStAccount, ins.buyerScAccount] if d.action is Action.SETTLE_DVP else self._prefer(d)
        via = side.ledger.any_sender(prefer)
        return (chain, d.kind, via.address if via else "")

    def _holder_of(self, d: Due) -> str | None:
        """The holder-signed account whose lock this is (None: not a lock, or one we sign ourselves)."""
        ins = d.rec.signed.instruction
        account = {Action.LOCK_ST: ins.sellerStAccount, Action.LOCK_SC: ins.buyerScAccount}.get(d.action)
        return account if account in self.holders else None

    @staticmethod
    def _prefer(d: Due) -> list[str]:
        ins = d.rec.signed.instruction
        if d.action in (Action.CLAIM_SC, Action.REFUND_SC):
            return [ins.sellerScAccount, ins.buyerScAccount]
        return [ins.buyerStAccount, ins.sellerStAccount]

    async def _act(self, items: list[Due]) -> None:
        """Check each item against the chain, send one transaction (a batch when several), record the outcome."""
        action = items[0].action
        kind = items[0].kind
        side = self.side_of(items[0])
        cooldown = (side.confirmations + 1) * side.block_time
        try:
            slots = await self._slots(items)
            if action is Action.CLAIM_SC:
                await self._gate_reveals(items)
            prepared = [p for p in await asyncio.gather(*(self._prepare_or_route(d, slot)
                                                          for d, slot in zip(items, slots)))
                        if p is not None]
            if not prepared:
                return
            ledger = prepared[0].ledger
            if len(prepared) == 1:
                await self._send_and_record(prepared, prepared[0].single, gas=prepared[0].gas)
                return
            prepared.sort(key=lambda p: p.sort_key)  # consecutive same token+counterparty: one transfer
            data = ledger.batch_call(kind, [p.entry for p in prepared])
            try:
                await prepared[0].via.estimate_gas(prepared[0].target, data)
            except TransactionReverted as exc:
                # one entry would fail the whole batch (all-or-nothing): send them one by one instead
                self.log.warning("batch_fallback", action=action.value, size=len(prepared), reason=exc.reason)
                results = await asyncio.gather(
                    *(self._send_and_record([p], p.single, gas=p.gas) for p in prepared),
                    return_exceptions=True)
                for p, res in zip(prepared, results):  # each trade gets its own outcome, not its neighbour's
                    if isinstance(res, Exception):
                        reason = getattr(res, "reason", None) or str(res)
                        self.not_before[p.due.key] = time.monotonic() + 2 * side.block_time
                        await self.store.note(p.due.rec.trade_id, ACTOR, f"{action.value}_failed", reason=reason)
                return
            await self._send_and_record(prepared, data)
        except TransactionReverted as exc:
            cooldown = 2 * side.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            for d in items:
                self.log.warning("action_failed", trade_id=d.rec.trade_id, action=action.value,
                                 reason=exc.reason or str(exc))
                await self.store.note(d.rec.trade_id, ACTOR, f"{action.value}_failed",
                                           reason=exc.reason or str(exc))
        except LedgerError as exc:
            cooldown = 2 * side.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            self.log.warning("action_failed", action=action.value, size=len(items), reason=str(exc),
                             error_type=type(exc).__name__)
        except (RedisError, OSError) as exc:  # Redis failing over or full (NOREPLICAS, refused): an outage
            # the transaction may be out already: the sent cooldown, (k+1) blocks, before the chain is re-read
            metrics.ACTION_FAILURES.labels(action.value).inc()
            self.log.warning("action_failed", action=action.value, size=len(items), reason=str(exc),
                             error_type=type(exc).__name__, retry="after the cooldown; the chain is re-read")
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected node answer: retry later, never die
            cooldown = 2 * side.block_time
            metrics.ACTION_FAILURES.labels(action.value).inc()
            self.log.exception("action_crashed", action=action.value, size=len(items), error=str(exc))
        finally:
            until = time.monotonic() + cooldown
            for d in items:
                self.not_before[d.key] = until
            self.on_settled(sorted({d.rec.trade_id for d in items}), None)

    async def _send_and_record(self, prepared: list[Prepared], data: str, gas: int | None = None) -> None:
        via = prepared[0].via
        action = prepared[0].due.action
        chain = self.side_of(prepared[0].due).name
        if not await self.coordinator.may_send(via.address, action in NEED_NO_RECORD):
            raise LeaseLost(f"account lease of {via.address} may have lapsed: not sending")
        # the reveal races T_sc under whatever congestion the counterparty may cause: it pays to win inclusion
        tx = await via.send(prepared[0].target, data, gas=gas, urgent=action is Action.CLAIM_SC)
        tx_hash = tx.tx_hash.to_0x_hex()
        sent_at = time.monotonic()
        batch = {"batch": len(prepared)} if len(prepared) > 1 else {}
        metrics.TX_SENT.labels(chain, action.value).inc()
        audits = []
        for p in prepared:
            reaction = sent_at - p.due.observed_at
            metrics.REACTION_SECONDS.observe(reaction)
            audits.append((p.due.rec.trade_id, ACTOR, f"{action.value}_sent",
                           dict(tx=tx_hash, nonce=tx.nonce, chain=chain, reaction_ms=round(reaction * 1000, 1), **batch)))
        # one line per transaction, naming every trade it carries (a line per trade of a 1,000-swap batch was ~5%
        # of a busy worker's CPU); each trade's audit trail has its own entry
        named = _trades_named(prepared)
        self.log.info("tx_sent", action=action.value, tx=tx_hash, chain=chain, **batch, **named)
        await self.store.add_audits(audits, keep_if_refused=True)  # one round trip per transaction, not one per trade
        receipt = await via.wait(tx, timeout=self._wait_budget(prepared))
        gas_used = int(receipt["gasUsed"])
        metrics.GAS.labels(chain, action.value).inc(gas_used)
        self._measured(chain, prepared[0].due.kind, gas_used, len(prepared))
        mined = receipt["transactionHash"].to_0x_hex()
        mined_entry = dict(tx=mined, block=receipt["blockNumber"], gas=gas_used // len(prepared), chain=chain, **batch)
        await self.store.add_audits([(p.due.rec.trade_id, ACTOR, f"{action.value}_mined", mined_entry)
                                     for p in prepared], keep_if_refused=True)
        self.log.info("tx_mined", action=action.value, tx=mined, block=receipt["blockNumber"],
                      gas=gas_used // len(prepared), seconds=round(time.monotonic() - sent_at, 3), **batch, **named)

    def _wait_budget(self, prepared: list[Prepared]) -> float:
        """How long to keep one transaction alive before re-planning: until the earliest timelock it races
        (after it a claim cannot succeed and decide() should pick the refund), at most 120 s, and never less
        than a few blocks."""
        expiries = [p.expires for p in prepared if p.expires is not None]
        if not expiries:
            return 120.0
        side = self.side_of(prepared[0].due)
        timelock = min(expiries)
        floor = 4 * side.block_time + self.settings.inclusion_delay
        return min(120.0, max(floor, float(timelock - side.now())))

    def _swap_of(self, d: Due) -> tuple[HtlcLedger, bytes]:
        """The ledger and swap id an action touches."""
        ins = d.rec.signed.instruction
        tid = ins.trade_id_bytes
        ledger = self.side_of(d).ledger
        if d.action is Action.SETTLE_DVP:
            return ledger, ledger.dvp_digest(dvp_terms(ins))
        if d.action is Action.LOCK_ST:
            return ledger, ledger.swap_id_of(ins.sellerStAccount, tid)
        if d.action is Action.LOCK_SC:
            return ledger, ledger.swap_id_of(ins.buyerScAccount, tid)
        ev = d.lock
        assert ev is not None
        return ledger, ev.swap_id

    async def _slots(self, items: list[Due]) -> list[bytes]:
        """The current storage slot of every item's swap (all on one chain), in one round trip."""
        ledger = self._swap_of(items[0])[0]
        contract = ledger.dvp if items[0].action is Action.SETTLE_DVP else None
        return await ledger.swap_slots([self._swap_of(d)[1] for d in items], contract)

    async def _prepare_or_route(self, d: Due, slot: bytes) -> Prepared | None:
        """_prepare(); when the action needs an account another worker signs for, hand the trade to it."""
        try:
            async with self._preparing:
                return await self._prepare(d, slot)
        except (NeedsAccount, LeaseLost) as exc:
            account = exc.account
            if account is None:
                raise
        if await self.coordinator.route(account, d.rec.trade_id):
            metrics.ROUTED.inc()
            self.log.info("action_routed", trade_id=d.rec.trade_id, action=d.action.value, account=account)
        return None

    @staticmethod
    def _sender(ledger: HtlcLedger, account: str) -> TxSender:
        """The sender of `account` if this worker holds its lease; else NeedsAccount (route the action)."""
        via = ledger.senders.get(account)
        if via is None:
            raise NeedsAccount(account)
        return via

    @staticmethod
    def _gas_sender(ledger: HtlcLedger, prefer: list[str]) -> TxSender:
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
        if action is Action.SETTLE_DVP:
            return await self._prepare_settle(d, slot)
        if self._holder_of(d) is not None:
            return await self._prepare_signed_lock(d, slot)
        if action is Action.LOCK_ST:
            st = self.side_of(d).ledger
            if slot != bytes(32):
                return None  # already locked (maybe by our previous incarnation): wait for confirmations
            via = self._sender(st, ins.sellerStAccount)
            await st.ensure_allowance(ins.sellerStAccount, ins.stToken, ins.stAmount)
            terms = (tid, ins.stToken, ins.stAmount, ins.buyerStAccount, bytes.fromhex(rec.fields["hashlock"]),
                     int(rec.fields["t_st"]))
            return Prepared(d, st, via, terms, (ins.stToken,), expires=terms[-1])
        if action is Action.LOCK_SC:
            assert d.st_ev is not None
            route = self.routes.route(ins)
            sc = route.sc.ledger
            t_sc = sc_timelock_for(d.st_ev.timelock, route.policy.delta())
            if slot != bytes(32):
                return None
            via = self._sender(sc, ins.buyerScAccount)
            if rec.get("t_sc") is None:
                await self.store.update(rec, {"t_sc": t_sc}, actor=ACTOR, event="sc_lock_planned", t_sc=t_sc)
            await sc.ensure_allowance(ins.buyerScAccount, ins.scToken, ins.scAmount)
            terms = (tid, ins.scToken, ins.scAmount, ins.sellerScAccount, d.st_ev.hashlock, t_sc)
            return Prepared(d, sc, via, terms, (ins.scToken,), expires=t_sc)
        ledger, ev = self.side_of(d).ledger, d.lock
        assert ev is not None
        if slot != ev.terms_hash:
            return None  # claimed or refunded already (a later lock of the same swap id may hold the slot now)
        via = self._gas_sender(ledger, self._prefer(d))
        if action in (Action.REFUND_ST, Action.REFUND_SC):
            swap = (ev.trade_id, ev.sender, ev.token, ev.amount, ev.receiver, ev.hashlock, ev.timelock)
            return Prepared(d, ledger, via, swap, (ev.token, ev.sender))
        preimage = self._preimage(d)
        if preimage is None:
            return None
        if action is Action.CLAIM_SC and not self._public(d) and not self._reveal_ok.pop(d.key, False):
            return None  # do not reveal: asked again next round while the reveal window lasts, then both refund
        claim = (preimage, ev.swap_id, ev.token, ev.amount, ev.receiver, ev.timelock)
        return Prepared(d, ledger, via, claim, (ev.token, ev.receiver), expires=ev.timelock)

    async def _prepare_signed_lock(self, d: Due, slot: bytes) -> Prepared | None:
        """A holder-signed lock: the holder's kept authorisation, sent by any account we hold, once the chain
        shows it can succeed (its nonce is the holder's next, the allowance or the permit covers the amount)."""
        rec = d.rec
        leg = "st" if d.action is Action.LOCK_ST else "sc"
        auth = stored_authorization(rec, leg)
        side = self.side_of(d)
        ledger = side.ledger
        if auth is None or slot != bytes(32):
            return None  # no authorisation yet, or locked already: wait
        holder = self._holder_of(d)
        assert holder is not None
        nonce, allowance = await ledger.holder_state(holder, auth.token)
        event, reason = "authorization_unusable", self._signed_lock_problem(d, auth, leg)  # checked again here
        if reason is None and nonce > auth.nonce:
            reason = f"the holder's nonce {auth.nonce} was used by another lock (next is {nonce})"
        elif reason is None and side.now() >= auth.deadline:
            reason = f"its deadline {auth.deadline} has passed"
        elif reason is None and nonce < auth.nonce:  # an earlier authorisation of the holder goes first
            event, reason = "authorization_waiting", f"the holder's nonce {nonce} is not used yet"
        if reason is not None:
            if self._withheld.get(f"{rec.trade_id}:{leg}") != reason:  # logged and audited once per reason
                self._withheld[f"{rec.trade_id}:{leg}"] = reason
                self.log.warning(event, trade_id=rec.trade_id, leg=leg, reason=reason)
                await self.store.note(rec.trade_id, ACTOR, event, leg=leg, reason=reason)
            return None
        permit = auth.permit_args if allowance < auth.amount else None
        via = self._gas_sender(ledger, [holder])
        if d.action is Action.LOCK_SC and rec.get_int("t_sc") != auth.timelock:
            await self.store.update(rec, {"t_sc": auth.timelock}, actor=ACTOR, event="sc_lock_planned",
                                    t_sc=auth.timelock)
        data = ledger.signed_lock_call(auth.terms, holder, auth.deadline, auth.signature, permit)
        return Prepared(d, ledger, via, auth.terms, (auth.token,), expires=min(auth.timelock, auth.deadline),
                        data=data)

    def _signed_lock_problem(self, d: Due, auth: Any, leg: str) -> str | None:
        """Why a kept authorisation must not be sent now: its terms no longer match the trade's plan (the ST
        lock's hashlock, T_sc <= T_st - Δ, our hashlock and T_st); None when they do."""
        rec = d.rec
        if leg == "st":
            if auth.hashlock.hex() != rec.get("hashlock") or auth.timelock != rec.get_int("t_st"):
                return "its hashlock or timelock is not the trade's plan"
            return None
        st_ev = d.st_ev
        delta = self.routes.route(rec.signed.instruction).policy.delta()
        if st_ev is None or auth.hashlock != st_ev.hashlock or auth.timelock > sc_timelock_for(st_ev.timelock, delta):
            return "its hashlock or timelock does not fit the ST lock (T_sc <= T_st - Δ)"
        return None

    async def _prepare_settle(self, d: Due, slot: bytes) -> Prepared | None:
        """Same-ledger path: both parties' authorisations over the exact terms, one AtomicDvP call."""
        ins = d.rec.signed.instruction
        ledger = self.side_of(d).ledger
        if slot != bytes(32):
            return None  # settled already (maybe by our previous incarnation): wait for confirmations
        if ledger.dvp is None:
            return None
        via = self._gas_sender(ledger, [ins.sellerStAccount, ins.buyerScAccount])
        terms = dvp_terms(ins)
        parties = ((ins.sellerStAccount, ins.stToken, ins.stAmount), (ins.buyerScAccount, ins.scToken, ins.scAmount))
        signatures = []
        for party, token, amount in parties:
            if party in ledger.all_senders:  # ours: sign, and approve the contract on the pair's first trade
                signatures.append(await ledger.authorise_dvp(party, terms))
                continue
            given = kept_dvp_signature(d.rec, party)  # another firm's party: its signature, its approval
            if given is None or await ledger.allowance(party, token, ledger.dvp) < amount:
                return None  # its firm has not signed or approved yet: asked again next round
            signatures.append(given)
        await asyncio.gather(*(ledger.ensure_allowance(p, t, a, spender=ledger.dvp) for p, t, a in parties
                               if p in ledger.all_senders))  # both in the same block when both are ours
        return Prepared(d, ledger, via, (terms, *signatures), expires=ins.deadline, to=ledger.dvp)

    @staticmethod
    def _public(d: Due) -> bool:
        """The secret is on chain already (a claim seen, or one a deep reorg took out while the ST claim stands)."""
        view = d.view
        return d.revealed or (view is not None and bool(view.sc.preimage or view.st.preimage or view.seen_preimage))

    async def _gate_reveals(self, items: list[Due]) -> None:
        """The reveal rule's chain half: the SC claim shows the secret, after which the buyer's ST claim must go
        through. Asked of each ST token itself, read-only (no simulated claim: that would hand the preimage to the
        node), in one batched request per ST chain for the whole batch; a chain that does not answer counts as
        "not established". Fills _reveal_ok for _prepare."""
        by_rules: dict[int, tuple[Any, list[tuple[Due, Any]]]] = {}
        for d in items:
            if self._public(d):
                continue
            route = self.routes.route(d.rec.signed.instruction)
            rules = route.st.ledger.rules
            by_rules.setdefault(id(rules), (rules, []))[1].append((d, route))
        for rules, group in by_rules.values():
            try:
                reasons: list[str | None] = await rules.refusals(
                    [route.st_claim(d.rec.signed.instruction) for d, route in group])
            except LedgerError as exc:
                reasons = [f"st_chain_unanswered:{type(exc).__name__}"] * len(group)
            for (d, route), reason in zip(group, reasons):
                tid = d.rec.trade_id
                self._reveal_ok[d.key] = reason is None
                if reason is None:
                    if self._withheld.pop(tid, None) is not None:
                        await self.store.note(tid, ACTOR, "reveal_unblocked")
                    continue
                metrics.REVEALS_WITHHELD.labels(reason.split(":")[0]).inc()
                if self._withheld.get(tid) != reason:
                    self._withheld[tid] = reason
                    self.log.warning("reveal_withheld", trade_id=tid, chain=route.st.name, reason=reason)
                    await self.store.note(tid, ACTOR, "reveal_withheld", reason=reason)

    def _preimage(self, d: Due) -> bytes | None:
        view, rec = d.view, d.rec
        public = (view.sc.preimage or view.st.preimage or view.seen_preimage) if view is not None else d.preimage
        if public is not None:
            return public
        sealed = rec.get("secret")
        return self.box.open(sealed, rec.trade_id) if sealed else None
