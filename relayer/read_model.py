"""What the HTTP API may see and do: accept an instruction, read trades with their audit trail, the chains'
clocks and the readiness checks. The API reaches nothing else of the worker."""

from __future__ import annotations

import time
from typing import Any

from relayer.authorizations import DvpSignature, HolderLocks, LockAuthorization, SettlementAuthorizations
from relayer.errors import ConcurrentUpdate, NotCancellable, RelayerError
from relayer.intake import Intake
from relayer.operator import OperatorDesk
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.states import TradeState
from relayer.routing import Routes
from relayer.store import Store, TradeRecord

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

    async def trades(self, offset: int, limit: int, state: str | None) -> list[TradeWithAudit]:
        """A page of trades, newest first; with `state`, the page of the trades in that state."""
        items: list[TradeWithAudit] = []
        scan_offset = offset if state is None else 0
        skipped = 0
        while len(items) < limit:
            ids = await self.store.list_trades(scan_offset, 200 if state else limit)
            if not ids:
                break
            scan_offset += len(ids)
            for tid in ids:
                rec = await self.store.get(tid)
                if rec is None or (state and rec.state.value != state):
                    continue
                if state and skipped < offset:
                    skipped += 1
                    continue
                items.append((rec, await self.store.audit(tid)))
                if len(items) >= limit:
                    break
        return items

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
