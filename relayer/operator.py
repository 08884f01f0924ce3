"""Operator actions: pause and resume intake, cancel a trade nothing was locked for.

Each action is written with who did it: to the trade's audit trail for a trade, and to the operator log
(`dvp:operator_log`, a capped stream) for all of them. None can move funds in a way the protocol would not: a
cancel is refused once anything is locked or about to be (the trade then ends by refunds at its timelocks). The
state is in Redis, so every worker (and the CLI) sees the same pause.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from typing import Any

from relayer.errors import IntakePaused, NotCancellable
from relayer.protocol.states import TradeState
from relayer.store import PREFIX, Store

INTAKE_PAUSED = PREFIX + "intake:paused"  # JSON {by, at, reason} while intake is paused
OPERATOR_LOG = PREFIX + "operator_log"
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
