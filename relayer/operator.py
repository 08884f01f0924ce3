"""Operator actions: pause and resume intake, cancel a trade nothing was locked for, mark a trade watch-only,
re-drive a trade (read both chains again, decide again), run the refund sweep now.

Each action is written with who did it: to the trade's audit trail for a trade, and to the operator log
(`dvp:operator_log`, a capped stream) for all of them. None can move funds in a way the protocol would not: a
cancel is refused once anything is locked or about to be (the trade then ends by refunds at its timelocks); a
re-drive and a sweep only make the workers look again, and the protocol decides. The state and the requests are in
Redis, so every worker (and the CLI) sees the same pause, and the worker driving a trade carries out its re-drive.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from typing import Any

from relayer.errors import ConcurrentUpdate, IntakePaused, NotCancellable, NotWatchOnly
from relayer.protocol.states import TERMINAL, TradeState
from relayer.store import PREFIX, Store

INTAKE_PAUSED = PREFIX + "intake:paused"  # JSON {by, at, reason} while intake is paused
OPERATOR_LOG = PREFIX + "operator_log"
REDRIVE = PREFIX + "operator:redrive"  # SET of trade ids to read again and decide again (the driving worker's job)
SWEEP_REQUEST = PREFIX + "operator:sweep"  # JSON {by, at} until the sweeping worker ran the sweep
SWEEP_LAST = PREFIX + "operator:sweep:last"  # JSON: the last requested sweep's outcome
REQUESTS_EVERY = 1.0  # seconds between a worker's looks for re-drive and sweep requests (one Redis round trip)
PAUSE_CACHE_SECONDS = 1.0  # how stale a worker's view of the pause may be (one Redis read a second, not per trade)


def token_actor(token: str) -> str:
    """Who an API call was, for the audit: the role's token by fingerprint (never the token itself)."""
    return "api:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


class OperatorDesk:
    """The operator's actions on one store (the read model checks the chains before a cancel)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pause_seen: tuple[float, dict[str, Any] | None] = (0.0, None)

    async def _log(self, actor: str, action: str, **data: Any) -> None:
        await self.store.r.xadd(OPERATOR_LOG, {"at": f"{time.time():.3f}", "actor": actor, "action": action,
                                               "data": json.dumps(data)}, maxlen=10_000, approximate=True)

    async def pause_intake(self, actor: str, reason: str) -> dict[str, Any]:
        state = {"by": actor, "at": time.time(), "reason": reason}
        await self.store.r.set(INTAKE_PAUSED, json.dumps(state))
        await self._log(actor, "pause_intake", reason=reason)
        self._pause_seen = (time.monotonic(), state)
        return state

    async def resume_intake(self, actor: str) -> None:
        await self.store.r.delete(INTAKE_PAUSED)
        await self._log(actor, "resume_intake")
        self._pause_seen = (time.monotonic(), None)

    async def intake_pause(self, fresh: bool = False) -> dict[str, Any] | None:
        """The pause in force (None: intake open), read from Redis at most once a second unless `fresh`."""
        seen_at, state = self._pause_seen
        if fresh or time.monotonic() - seen_at > PAUSE_CACHE_SECONDS:
            raw = await self.store.r.get(INTAKE_PAUSED)
            state = json.loads(raw) if raw else None
            self._pause_seen = (time.monotonic(), state)
        return state

    async def check_intake_open(self) -> None:
        if (state := await self.intake_pause()) is not None:
            raise IntakePaused(f"intake is paused by {state['by']}: {state['reason'] or 'no reason given'}; retry "
                               "later")

    async def cancel(self, trade_id: str, actor: str, reason: str, locked: bool) -> TradeState:
        """MATCHED with no lock intent and nothing in either escrow slot (`locked`): ABORTED now, with the
        operator named. Otherwise NotCancellable: the protocol ends it (by refunds at the timelocks if nobody
        claims)."""
        rec = await self.store.get(trade_id)
        if rec is None:
            raise NotCancellable(f"trade {trade_id} is not known", code="not_found")
        if rec.state is not TradeState.MATCHED:
            raise NotCancellable(f"trade {trade_id} is {rec.state.value}: only a MATCHED trade with nothing locked can "
                                 "be cancelled; a locked one ends by refunds at its timelocks")
        if rec.get("hashlock") or locked:
            raise NotCancellable(f"trade {trade_id}: a lock is on chain or being sent; it ends by refunds at its "
                                 "timelocks, never by a cancel")
        await self.store.update(rec, {"state": TradeState.ABORTED.value, "cancelled_by": actor}, actor=actor,
                                event="cancelled", reason=reason)
        await self._log(actor, "cancel", trade_id=trade_id, reason=reason)
        return TradeState.ABORTED

    async def mark_watch_only(self, trade_id: str, actor: str, reason: str, holds_key: bool) -> None:
        """Mark a trade this relayer holds neither party's key for (`holds_key` False) as one it will never act on
        but to refund as a watcher: shown as such on the dashboard and in the API, audited with who did it."""
        for _ in range(5):
            rec = await self.store.get(trade_id)
            if rec is None:
                raise NotWatchOnly(f"trade {trade_id} is not known", code="not_found")
            if holds_key:
                raise NotWatchOnly(f"trade {trade_id}: this relayer holds the seller's or the buyer's key and acts on "
                                   "it; only a trade it holds no party's key for can be marked watch-only")
            if rec.state in TERMINAL:
                raise NotWatchOnly(f"trade {trade_id} is {rec.state.value}: finished, nothing to mark")
            try:
                await self.store.update(rec, {"watch_only": actor}, actor=actor, event="marked_watch_only",
                                        reason=reason)
            except ConcurrentUpdate:
                continue  # the driver wrote it meanwhile: mark the new version
            await self._log(actor, "mark_watch_only", trade_id=trade_id, reason=reason)
            return
        raise ConcurrentUpdate(f"trade {trade_id} kept changing while it was marked; retry")

    async def request_redrive(self, trade_id: str, actor: str, reason: str) -> None:
        """Ask the worker driving the trade to read both its chains again from the trade's first blocks and decide
        it again (a trade that looks stuck, after a node was fixed). Refused for an unknown or finished trade."""
        rec = await self.store.get(trade_id)
        if rec is None:
            raise NotCancellable(f"trade {trade_id} is not known", code="not_found")
        if rec.state in TERMINAL:
            raise NotCancellable(f"trade {trade_id} is {rec.state.value}: finished, nothing to re-drive",
                                 code="trade_finished")
        await self.store.r.sadd(REDRIVE, trade_id)
        await self.store.add_audit(trade_id, actor, "redrive_requested", reason=reason)
        await self._log(actor, "redrive", trade_id=trade_id, reason=reason)

    async def request_sweep(self, actor: str) -> dict[str, Any]:
        """Ask the sweeping worker to run the refund sweep now (strays and late locks whose timelock passed) and
        decide every trade again (any refund due is sent). Its outcome is in sweep_status()."""
        request = {"by": actor, "at": time.time()}
        await self.store.r.set(SWEEP_REQUEST, json.dumps(request))
        await self._log(actor, "refund_sweep")
        return request

    async def sweep_status(self) -> dict[str, Any]:
        """The pending request (if any) and the last sweep an operator asked for."""
        async with self.store.r.pipeline(transaction=False) as pipe:
            pipe.get(SWEEP_REQUEST)
            pipe.get(SWEEP_LAST)
            pending, last = await pipe.execute()
        return {"pending": json.loads(pending) if pending else None, "last": json.loads(last) if last else None}

    async def pending_requests(self) -> tuple[list[str], dict[str, Any] | None]:
        """(trade ids to re-drive, the sweep request) in one round trip, for the workers' rounds."""
        async with self.store.r.pipeline(transaction=False) as pipe:
            pipe.smembers(REDRIVE)
            pipe.get(SWEEP_REQUEST)
            ids, sweep = await pipe.execute()
        return sorted(ids), json.loads(sweep) if sweep else None

    async def redriven(self, trade_id: str, actor: str, reread: dict[str, int]) -> None:
        """The driving worker (`actor`) carried out a re-drive: chains read again from these blocks."""
        await self.store.r.srem(REDRIVE, trade_id)
        await self.store.add_audit(trade_id, actor, "redriven", reread=reread)

    async def drop_redrive(self, trade_id: str) -> None:
        """A re-drive of a trade that finished meanwhile: nothing to do."""
        await self.store.r.srem(REDRIVE, trade_id)

    async def swept(self, request: dict[str, Any], refunds_due: int, trades: int) -> None:
        """The sweeping worker ran a requested sweep: keep its outcome, clear the request (unless a newer came)."""
        outcome = {"requested_by": request["by"], "requested_at": request["at"], "ran_at": time.time(),
                   "refunds_due": refunds_due, "trades_decided_again": trades}
        await self.store.r.set(SWEEP_LAST, json.dumps(outcome))
        current = await self.store.r.get(SWEEP_REQUEST)
        if current is not None and json.loads(current) == request:
            await self.store.r.delete(SWEEP_REQUEST)
