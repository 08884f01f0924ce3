"""Webhooks to the back office: every state change (and the alerts: a claim racing its refund, a ONE_SIDED trade)
POSTed to DVP_WEBHOOK_URL, HMAC-signed, at least once.

The outbox is a Redis stream (`dvp:webhook:outbox`). A state change is added to it by the same Lua script that
writes the state (store._UPDATE), so no change is ever written without its event, and a worker killed between the
two cannot exist. Workers deliver through a consumer group: each event goes to one of them; one that dies holding
events has them claimed by another (XAUTOCLAIM). A failed delivery waits for its next attempt in a sorted set
(`dvp:webhook:retry`, 2 s doubling to 15 min) and goes back into the stream when due; after DVP_WEBHOOK_MAX_ATTEMPTS
it goes to the dead-letter list
(`dvp:webhook:dead`, `GET /v1/operator/webhooks/dead`). The receiver deduplicates on the event id (the
`Idempotency-Key` header): it is the same on every attempt. Events are not delivered in order (deliveries run
concurrently and a retry comes later): each carries the state before it (`previous`) and its time (`at`).

Body: {"event_id", "type": "state_changed" | "alert", "trade_id", "state", "previous", "at", ...}. Headers:
`X-DVP-Signature: sha256=<hex HMAC-SHA256 of "<X-DVP-Timestamp>.<body>" with DVP_WEBHOOK_SECRET>`,
`X-DVP-Timestamp`, `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.exceptions import RedisError, ResponseError

from relayer import metrics
from relayer.logging import get_logger
from relayer.store import PREFIX, WEBHOOK_OUTBOX, Store

OUTBOX = WEBHOOK_OUTBOX
DEAD = PREFIX + "webhook:dead"
RETRY = PREFIX + "webhook:retry"  # failed events by the time of their next attempt
GROUP = "webhooks"  # the consumer group of the outbox (a group name, not a key)
CLAIM_IDLE_MS = 30_000  # an event a worker read and neither delivered nor requeued for this long is taken over


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-DVP-Signature value a receiver recomputes to check the body came from this relayer."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


BACKOFF_CAP = 900.0  # 15 minutes: with the default 20 attempts a receiver may be down for about three hours


def backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: 2, 4, 8, … up to 15 minutes, with ±20% jitter (no thundering
    retries)."""
    return min(BACKOFF_CAP, 2.0 ** attempt) * random.uniform(0.8, 1.2)


async def queue_alerts(store: Store, alerts: list[tuple[str, str, dict[str, Any], str]],
                       unreport: Callable[[str, str], None], log: Any) -> None:
    """Each of a round's alerts into the outbox. From the first one Redis refuses on, each is handed back to
    `unreport` (trade id, what was marked reported), so the next round that still sees it raises it again: an alert
    counts as reported only once it is queued."""
    for i, (trade_id, alert, data, _) in enumerate(alerts):
        try:
            await enqueue_alert(store, trade_id, alert, **data)
        except (RedisError, OSError) as exc:
            for later_id, _, _, what in alerts[i:]:
                unreport(later_id, what)
            log.warning("alerts_not_queued", count=len(alerts) - i, error=str(exc), error_type=type(exc).__name__)
            return


async def enqueue_alert(store: Store, trade_id: str, alert: str, **data: Any) -> None:
    """An alert event (not a state change): added on its own, at least once from here on."""
    await store.r.xadd(OUTBOX, {"type": "alert", "alert": alert, "trade_id": trade_id, "at": f"{time.time():.3f}",
                                "data": json.dumps(data)})  # never trimmed: every entry is undelivered


# KEYS: retry set, outbox. ARGV: now. Moves the retries that are due back into the outbox; ZREM decides which
# worker moves one (only one can remove it), so a retry is never doubled.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local fields = cjson.decode(member)
    local args = {}
    for k, v in pairs(fields) do table.insert(args, k); table.insert(args, v) end
    redis.call('XADD', KEYS[2], '*', unpack(args))
  end
end
return #due
"""


class WebhookSender:
    """Delivers the outbox to one URL until stopped (one per worker; they share the work through the consumer
    group). A failed event waits in a sorted set (`dvp:webhook:retry`, by due time), not in the stream, so no
    worker holds an event while it backs off and none can take it over and send it twice."""

    def __init__(self, store: Store, url: str, secret: str, consumer: str, max_attempts: int = 8,
                 timeout: float = 5.0) -> None:
        self.store, self.url, self.secret, self.consumer = store, url, secret, consumer
        self.max_attempts, self.timeout = max_attempts, timeout
        self.log = get_logger()
        self.delivered = 0
        self._promote = store.r.register_script(_PROMOTE)

    async def _ensure_group(self) -> None:
        try:
            await self.store.r.xgroup_create(OUTBOX, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        claimed = await self.store.r.xautoclaim(OUTBOX, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=50)
        out += [(eid, data) for eid, data in claimed[1] if data]
        fresh = await self.store.r.xreadgroup(GROUP, self.consumer, {OUTBOX: ">"}, count=50, block=500)
        for _stream, entries in fresh or []:
            out += entries
        return out

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
            while not stop.is_set():
                try:
                    await self._ensure_group()
                    await self._promote(keys=[RETRY, OUTBOX], args=[f"{time.time():.3f}"])
                    entries = await self._read()
                    await asyncio.gather(*(self._deliver_safely(http, eid, data) for eid, data in entries))
                    metrics.WEBHOOK_BACKLOG.set(await self.store.r.xlen(OUTBOX) + await self.store.r.zcard(RETRY))
                except (RedisError, OSError) as exc:  # Redis down: the events wait in the stream
                    self.log.warning("webhook_outbox_unavailable", error=str(exc))
                    await asyncio.sleep(1.0)
                except Exception as exc:  # noqa: BLE001 - the sender must outlive anything; the events wait
                    self.log.exception("webhook_sender_error", error=str(exc))
                    await asyncio.sleep(1.0)

    async def _deliver_safely(self, http: aiohttp.ClientSession, eid: str, data: dict[str, str]) -> None:
        """One entry; one that cannot even be read as an event (malformed) is dead-lettered, not retried forever."""
        try:
            await self._deliver(http, eid, data)
        except (RedisError, OSError):
            raise
        except (KeyError, ValueError, TypeError) as exc:
            async with self.store.r.pipeline(transaction=True) as pipe:
                pipe.lpush(DEAD, json.dumps({"event": data, "attempts": 0, "last_error": f"malformed: {exc}",
                                             "dead_at": time.time()}))
                pipe.xack(OUTBOX, GROUP, eid)
                pipe.xdel(OUTBOX, eid)
                await pipe.execute()
            metrics.WEBHOOK_DEAD.inc()

    def body(self, eid: str, data: dict[str, str]) -> bytes:
        doc: dict[str, Any] = {"event_id": data.get("event_id", eid), "type": data.get("type", "state_changed"),
                               "trade_id": data["trade_id"], "at": float(data.get("at", 0))}
        for name in ("state", "previous", "alert"):
            if data.get(name):
                doc[name] = data[name]
        if data.get("data"):
            doc["data"] = json.loads(data["data"])
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    async def _deliver(self, http: aiohttp.ClientSession, eid: str, data: dict[str, str]) -> None:
        body = self.body(eid, data)
        event_id = data.get("event_id", eid)
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": event_id, "X-DVP-Timestamp": stamp,
                   "X-DVP-Signature": sign(self.secret, stamp, body)}
        attempt = int(data.get("attempt", 0)) + 1
        error = ""
        try:
            # a redirect is a failure: followed, a POST would become a GET and a login page's 200 would "deliver"
            async with http.post(self.url, data=body, headers=headers, allow_redirects=False) as r:
                if 200 <= r.status < 300:
                    async with self.store.r.pipeline(transaction=True) as pipe:
                        pipe.xack(OUTBOX, GROUP, eid)
                        pipe.xdel(OUTBOX, eid)
                        await pipe.execute()
                    self.delivered += 1
                    return
                error = f"HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        # failed: the same event (same event id) waits for its next attempt, or is dead-lettered; in one
        # transaction with the ack, so it is never lost nor doubled
        dead = attempt >= self.max_attempts
        async with self.store.r.pipeline(transaction=True) as pipe:
            if dead:
                pipe.lpush(DEAD, json.dumps({"event": json.loads(body), "attempts": attempt, "last_error": error,
                                             "dead_at": time.time()}))  # never trimmed: DvpWebhookDeadLetters
            else:
                retry = {**data, "event_id": event_id, "attempt": str(attempt)}
                pipe.zadd(RETRY, {json.dumps(retry, sort_keys=True): time.time() + backoff(attempt)})
            pipe.xack(OUTBOX, GROUP, eid)
            pipe.xdel(OUTBOX, eid)
            await pipe.execute()
        metrics.WEBHOOK_FAILURES.inc()
        if dead:
            metrics.WEBHOOK_DEAD.inc()
        self.log.warning("webhook_failed", event_id=event_id, attempt=attempt, error=error, dead=dead)


async def dead_letters(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The newest events that could not be delivered after every attempt."""
    return [json.loads(x) for x in await store.r.lrange(DEAD, 0, limit - 1)]
