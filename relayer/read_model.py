"""What the HTTP API may see and do: accept an instruction, read trades with their audit trail, the chains'
clocks and the readiness checks. The API reaches nothing else of the worker."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.errors import LedgerError
from relayer import metrics
from relayer.authorizations import DvpSignature, HolderLocks, LockAuthorization, SettlementAuthorizations
from relayer.driver import roles_of
from relayer.errors import ConcurrentUpdate, NotCancellable, RelayerError
from relayer.explain import Waiting, explain
from relayer.intake import Intake
from relayer.operator import OperatorDesk
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.states import TERMINAL, TradeState
from relayer.report import TokenNames, human
from relayer.routing import Routes
from relayer.store import INDEXED_STATES, Store, TradeRecord
from relayer.webhooks import DEAD, OUTBOX, RETRY

TradeWithAudit = tuple[TradeRecord, list[dict[str, Any]]]


class ReadModel:
    """The worker's read side and its one write (intake), for the API."""

    def __init__(self, store: Store, intake: Intake, routes: Routes, holder_locks: HolderLocks,
                 settlements: SettlementAuthorizations, operator: OperatorDesk) -> None:
        self.operator = operator
        self.store = store
        self.intake = intake
        self.routes = routes
        self.holder_locks = holder_locks
        self.settlements = settlements
        self.token_names = TokenNames()

    async def lock_request(self, trade_id: str, leg: str) -> dict[str, Any] | None:
        """What the leg's holder should sign now, or for "dvp" the settlement's terms and the party signatures this
        relayer can give (None: no such trade)."""
        rec = await self.store.get(trade_id)
        if rec is None:
            return None
        if leg == "dvp":
            return await self.settlements.request(rec)
        return await self.holder_locks.request(rec, leg)

    async def authorize(self, trade_id: str, auth: LockAuthorization | DvpSignature) -> bool | None:
        """Check and keep a holder's lock authorisation: True (kept), False (the same one was kept already), None
        (no such trade). A record that changed while checking is read again (bounded)."""
        for _ in range(5):
            rec = await self.store.get(trade_id)
            if rec is None:
                return None
            try:
                if isinstance(auth, DvpSignature):
                    return await self.settlements.accept(rec, auth)
                return await self.holder_locks.accept(rec, auth)
            except ConcurrentUpdate:
                continue  # the driver wrote the trade in between: check against the new record
        raise ConcurrentUpdate(f"trade {trade_id} kept changing while its authorisation was checked; retry")

    async def cancel(self, trade_id: str, actor: str, reason: str) -> TradeState:
        """An operator's cancel (OperatorDesk.cancel), after reading both escrow slots: a lock on chain, even one
        not yet confirmed, refuses it."""
        rec = await self.store.get(trade_id)
        locked = False
        if rec is not None and rec.state is TradeState.MATCHED:
            ins = rec.signed.instruction
            route = self.routes.route(ins)
            if route.is_atomic(ins):
                # one AtomicDvP transaction settles it, and a party's signature may already be with the other
                # firm: no escrow slot says "nothing can move", so it is never cancelled here
                raise NotCancellable(f"trade {trade_id} settles in one AtomicDvP transaction on one ledger; it ends "
                                     "at its deadline if nobody settles it, never by a cancel")
            for side, sender in ((route.st, ins.sellerStAccount), (route.sc, ins.buyerScAccount)):
                slot = await side.ledger.swap_slot(side.ledger.swap_id_of(sender, ins.trade_id_bytes))
                locked = locked or slot != bytes(32)
        return await self.operator.cancel(trade_id, actor, reason, locked)

    async def accept(self, signed: SignedInstruction) -> tuple[bool, TradeRecord]:
        """Admit an instruction; (created, the stored record)."""
        created = await self.intake.accept(signed)
        rec = await self.store.get(signed.instruction.tradeId)
        assert rec is not None
        return created, rec

    async def accept_many(self, signed: list[SignedInstruction]) -> list[bool | RelayerError]:
        return await self.intake.accept_many(signed)

    async def states(self, trade_ids: list[str]) -> dict[str, Any]:
        """The current state of each of these trades, in one round trip."""
        return {rec.trade_id: rec.state for rec in await self.store.get_many(trade_ids)}

    async def trade(self, trade_id: str) -> TradeWithAudit | None:
        rec = await self.store.get(trade_id)
        if rec is None:
            return None
        return rec, await self.store.audit(rec.trade_id)

    def waiting(self, rec: TradeRecord) -> Waiting | None:
        """Why the trade waits and what happens next (None: finished, or on ledgers no longer followed)."""
        ins = rec.signed.instruction
        try:
            route = self.routes.route(ins)
        except RelayerError:
            return None
        return explain(rec.state, roles_of(ins, route, self.holder_locks.holders), deadline=ins.deadline,
                       t_st=rec.get_int("st_timelock") or rec.get_int("t_st"),
                       t_sc=rec.get_int("sc_timelock") or rec.get_int("t_sc"),
                       secret_created=rec.get("hashlock") is not None, watch_only=rec.get("watch_only") is not None)

    async def mark_watch_only(self, trade_id: str, actor: str, reason: str) -> TradeState:
        """OperatorDesk.mark_watch_only, knowing whether this relayer holds a party's key for the trade."""
        rec = await self.store.get(trade_id)
        holds_key = False
        if rec is not None:
            route = self.routes.route(rec.signed.instruction)
            roles = roles_of(rec.signed.instruction, route, self.holder_locks.holders)
            holds_key = roles.seller or roles.buyer
        await self.operator.mark_watch_only(trade_id, actor, reason, holds_key)
        rec = await self.store.get(trade_id)
        assert rec is not None
        return rec.state

    async def tokens(self, rec: TradeRecord) -> dict[str, dict[str, Any]]:
        """The trade's two tokens by symbol and decimals (read from the tokens once each) with its amounts."""
        ins = rec.signed.instruction
        out: dict[str, dict[str, Any]] = {}
        try:
            route = self.routes.route(ins)
        except RelayerError:
            route = None
        for leg, token, amount in (("st", ins.stToken, ins.stAmount), ("sc", ins.scToken, ins.scAmount)):
            symbol, decimals = token[:10] + "…", 0
            if route is not None:
                try:
                    symbol, decimals = await self.token_names.of(route.st if leg == "st" else route.sc, token)
                except (LedgerError, OSError):
                    pass  # the chain is down: shown by address, read again next time
            out[leg] = {"address": token, "symbol": symbol, "decimals": decimals, "amount": human(amount, decimals)}
        return out

    async def page(self, offset: int, limit: int, state: str | None, scan_most: int = 5_000) -> list[TradeWithAudit]:
        """A page of trades, newest first, read in a few pipelined round trips (not one per trade). With `state`:
        a rare final state (ONE_SIDED, REJECTED) from its index, among all trades; an open state among the open
        trades; SETTLED or ABORTED, the bulk of all trades, among the newest `scan_most`."""
        if state is None:
            recs = await self.store.get_many(await self.store.list_trades(offset, limit))
        elif state in INDEXED_STATES:
            recs = await self.store.get_many(await self.store.list_in_state(TradeState(state), offset, limit))
        elif state in TradeState.__members__ and TradeState(state) not in TERMINAL:
            recs = await self._scan(self.store.list_open, offset, limit, state, scan_most=None)
        else:
            recs = await self._scan(self.store.list_trades, offset, limit, state, scan_most)
        audits = await self.store.audits([r.trade_id for r in recs])
        return [(r, audits.get(r.trade_id, [])) for r in recs]

    async def _scan(self, ids_from: Callable[[int, int], Awaitable[list[str]]], offset: int, limit: int, state: str,
                    scan_most: int | None) -> list[TradeRecord]:
        """The trades in `state` among those `ids_from` lists (newest first), 500 at a time, at most `scan_most`."""
        recs: list[TradeRecord] = []
        skipped = scanned = 0
        while len(recs) < limit and (scan_most is None or scanned < scan_most):
            ids = await ids_from(scanned, 500)
            if not ids:
                break
            scanned += len(ids)
            for rec in await self.store.get_many(ids):
                if rec.state.value != state:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                recs.append(rec)
                if len(recs) >= limit:
                    break
        return recs

    async def health(self, max_lag_blocks: int = 20) -> dict[str, Any]:
        """The health strip: Redis, each ledger as the worker follows it (no RPC call: what the last rounds saw),
        the chains' clock offsets, the intake pause, webhooks, the sweep. One Redis round trip and the pause read."""
        try:
            async with self.store.r.pipeline(transaction=False) as pipe:
                pipe.ping()
                pipe.xlen(OUTBOX)
                pipe.zcard(RETRY)
                pipe.llen(DEAD)
                _, outbox, retry, dead = await pipe.execute()
            redis_ok = True
        except Exception:  # noqa: BLE001 - the strip says Redis is down; the page still loads
            redis_ok, outbox, retry, dead = False, 0, 0, 0
        now = time.time()
        chains: list[dict[str, Any]] = []
        for side in self.routes.sides:
            confirmed = side.follower.height if side.follower else -1
            urls = side.ledger.chain.rpc_urls
            chains.append({
                "name": side.name, "role": side.role, "chain_id": side.chain_id, "head": side.head,
                "confirmed": confirmed, "lag_blocks": max(0, side.head - confirmed) if side.head >= 0 else 0,
                "fresh": side.fresh, "head_age_seconds": round(now - side.head_seen_at, 1) if side.head_seen_at else None,
                "rpc_errors": int(metrics.RPC_ERRORS.labels(side.name)._value.get()),
                "endpoint": f"{side.ledger.chain.active_index + 1} of {len(urls)}"})
        offsets = []
        pairs = self.routes.pairs()
        for route in pairs:
            seconds = (route.st.now() - route.sc.now()) if route.st.head_seen_at and route.sc.head_seen_at else 0
            offsets.append({"st": route.st.name, "sc": route.sc.name, "seconds": seconds,
                            "within_bound": abs(seconds) <= route.policy.max_clock_skew})
        pause = await self.operator.intake_pause() if redis_ok else None
        ready = redis_ok and all(c["fresh"] and c["lag_blocks"] <= max_lag_blocks for c in chains)
        return {"ready": ready, "redis": redis_ok, "chains": chains, "clock_offsets": offsets,
                "max_clock_skew": max((r.policy.max_clock_skew for r in pairs), default=0.0),
                "intake": {"paused": pause is not None, **(pause or {})},
                "webhooks": {"backlog": outbox + retry, "dead": dead} if self.store.webhooks else None,
                "sweep": await self.operator.sweep_status() if redis_ok else {"pending": None, "last": None}}

    def clocks(self, rec: TradeRecord) -> tuple[int, int]:
        """The clocks of a trade's two chains now (projected from their last heads); the wall clock for a chain
        not seen yet, or for a trade on chains not followed (any more)."""
        now = int(time.time())
        try:
            route = self.routes.route(rec.signed.instruction)
        except RelayerError:
            return now, now
        return tuple(s.now() if s.head_seen_at else now for s in (route.st, route.sc))  # type: ignore[return-value]

    async def readiness(self, max_lag_blocks: int) -> dict[str, Any]:
        """Each dependency: True, or why it is not ready."""
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = await self.store.ping()
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready", with its type
            checks["redis"] = f"down: {type(exc).__name__}"
        tokens = self.intake.tokens
        for side in self.routes.sides:
            try:
                head = await side.ledger.chain.block_number()
                processed = side.follower.height if side.follower else -1
                lag = head - processed
                ok = side.follower is not None and lag <= max_lag_blocks
                checks[side.name] = True if ok else f"follower lag {lag} blocks"
                named = side.name in ("st", "sc")  # the ledgers the DVP_ST_* / DVP_SC_* variables set
                if not await _has_code(side.ledger.chain, side.ledger.escrow):
                    where = f"DVP_{side.name.upper()}_ESCROW" if named else f"the escrow of ledger {side.name}"
                    checks[side.name] = f"no contract at {where} {side.ledger.escrow}"
                elif not tokens[side.name]:
                    what = f"DVP_{side.name.upper()}_TOKENS" if named else f"the token list of ledger {side.name}"
                    checks[side.name] = f"{what} is empty: no trade can be accepted"
            except Exception as exc:  # noqa: BLE001
                checks[side.name] = f"down: {type(exc).__name__}"
        return checks


async def _has_code(chain: Any, address: str) -> bool:
    async def get(w3: Any) -> bytes:
        return bytes(await w3.eth.get_code(address))

    return bool(await chain.call(get))
