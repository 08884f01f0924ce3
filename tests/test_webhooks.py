"""Webhooks to the back office on real components (anvil, Redis, a real HTTP receiver): every state change of a
settled trade arrives HMAC-signed with a stable idempotency key, through a receiver that fails, times out and
answers slowly; events wait in the Redis outbox while the receiver is down and a new worker delivers them; an
event that fails every attempt is dead-lettered and shown to the operator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

from aiohttp import web

from deploy.processes import free_port
from relayer.protocol.states import TradeState
from relayer.webhooks import OUTBOX
from tests.relayer_kit import Net, api_session, close_engine, drive

SECRET = "whsec-" + "k" * 26


class Receiver:
    """The back office: answers per the `plan` of statuses (None: hang past the sender's timeout; a float: answer
    200 after that many seconds), then 200; keeps every request."""

    def __init__(self, plan: list[Any] | None = None) -> None:
        self.plan = list(plan or [])
        self.seen: list[dict[str, Any]] = []
        self.redirected: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"body": body, "headers": dict(request.headers)})
        step = self.plan.pop(0) if self.plan else 200
        if step == 302:  # "moved": a sender that followed it would turn the POST into a GET of /elsewhere
            raise web.HTTPFound("/elsewhere")
        if step is None:
            await asyncio.sleep(5)  # past the sender's 1 s timeout
            return web.Response(status=200)
        if isinstance(step, float):
            await asyncio.sleep(step)
            return web.Response(status=200)
        return web.Response(status=step)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected.append(request.method)
        return web.Response(status=200)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        app.router.add_route("*", "/elsewhere", self.elsewhere)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def verified(self) -> list[dict[str, Any]]:
        """Bodies whose signature checks with the secret (all of them, or the test fails)."""
        out = []
        for req in self.seen:
            stamp, given = req["headers"]["X-DVP-Timestamp"], req["headers"]["X-DVP-Signature"]
            want = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + req["body"], hashlib.sha256).hexdigest()
            assert hmac.compare_digest(given, want), req
            doc = json.loads(req["body"])
            assert req["headers"]["Idempotency-Key"] == doc["event_id"]
            out.append(doc)
        return out


async def _deliver(engine, until: Any, timeout: float = 40.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(engine.webhooks.run(stop))
    try:
        for _ in range(int(timeout / 0.2)):
            if until():
                return
            await asyncio.sleep(0.2)
        raise AssertionError("not delivered in time")
    finally:
        stop.set()
        await task


async def test_every_state_change_arrives_signed_once_deduplicated_through_failures_and_slowness(net: Net):
    # a failure, a timeout, a slow answer, a failure, a redirect (a failure too: the event is not delivered there)
    receiver = await Receiver([500, None, 0.5, 503, 302]).start()
    engine = await net.engine([net.seller, net.buyer], webhook_url=receiver.url, webhook_secret=SECRET,
                              webhook_timeout=1.0)
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED

        def settled_seen() -> bool:
            """SETTLED arrived, the receiver's plan is used up, and every failed attempt was made again."""
            ids = [json.loads(r["body"])["event_id"] for r in receiver.seen]
            return (any(json.loads(r["body"]).get("state") == "SETTLED" for r in receiver.seen)
                    and not receiver.plan and len(ids) == len(set(ids)) + 4)

        await _deliver(engine, settled_seen)
        docs = receiver.verified()
        unique = {d["event_id"]: d for d in docs}
        assert len(docs) == len(unique) + 4  # at least once: the failed, timed-out and refused ones came again
        assert receiver.redirected == []  # a redirect was never followed
        chain = sorted(unique.values(), key=lambda d: d["at"])
        assert all(d["type"] == "state_changed" and d["trade_id"] == tid for d in chain)
        assert chain[-1]["state"] == "SETTLED"
        for before, after in zip(chain, chain[1:]):
            assert after["previous"] == before["state"]  # no change missing in between
        assert await engine.store.r.xlen(OUTBOX) == 0
    finally:
        await close_engine(engine)
        await receiver.stop()


async def test_events_wait_in_the_outbox_while_the_receiver_is_down_and_a_new_worker_delivers_them(net: Net):
    engine = await net.engine([net.seller, net.buyer], webhook_url="http://127.0.0.1:9/nobody", webhook_secret=SECRET)
    url = engine.settings.redis_url
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        waiting = await engine.store.r.xlen(OUTBOX)
        assert waiting >= 2  # written with the states, nobody delivered them
    finally:
        await close_engine(engine)  # the worker is gone; the events are in Redis
    receiver = await Receiver().start()
    other = await net.engine([net.seller, net.buyer], redis_url=url, webhook_url=receiver.url, webhook_secret=SECRET)
    try:
        await _deliver(other, lambda: len(receiver.seen) >= waiting)
        states = [d["state"] for d in sorted(receiver.verified(), key=lambda d: d["at"])]
        assert states[-1] == "SETTLED" and len(states) == waiting
    finally:
        await close_engine(other)
        await receiver.stop()


async def test_an_event_that_fails_every_attempt_is_dead_lettered_and_shown_to_the_operator(net: Net):
    receiver = await Receiver([500] * 50).start()
    engine = await net.engine([net.seller], webhook_url=receiver.url, webhook_secret=SECRET, webhook_max_attempts=2)
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=60)
        await _deliver(engine, lambda: len(receiver.seen) >= 2)
        for _ in range(50):
            if await engine.store.r.xlen(OUTBOX) == 0:
                break
            await asyncio.sleep(0.1)
        async with api_session(engine, "", tokens={"o" * 24: "operator", "s" * 24: "submit"}) as http:
            async with http.get("/v1/operator/webhooks/dead", headers={"Authorization": "Bearer " + "s" * 24}) as r:
                assert r.status == 403
            async with http.get("/v1/operator/webhooks/dead", headers={"Authorization": "Bearer " + "o" * 24}) as r:
                assert r.status == 200
                dead = (await r.json())["events"]
        assert dead and dead[0]["attempts"] == 2 and dead[0]["last_error"] == "HTTP 500"
        assert dead[0]["event"]["trade_id"] == tid and dead[0]["event"]["state"] == "ST_LOCKED"
    finally:
        await close_engine(engine)
        await receiver.stop()
