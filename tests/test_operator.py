"""Operator actions on real components (two anvils, Redis, the HTTP API, the CLI): pausing intake stops every
worker sharing the Redis from accepting, with who did it logged and exported; a cancel ends a trade nothing was
locked for and is refused as soon as a lock is on chain or planned (the protocol then ends the trade by refunds)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from relayer import metrics
from relayer.operator import OPERATOR_LOG, token_actor
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, api_session, close_engine, drive, worker_env

OPERATOR, SUBMIT = "o" * 24, "s" * 24
TOKENS = {OPERATOR: "operator", SUBMIT: "submit"}


async def _call(http: Any, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, path, headers={"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"},
                            data=None if body is None else json.dumps(body)) as r:
        return r.status, await r.json()


async def _cli(net: Net, port: int, *args: str) -> tuple[int, Any]:
    """`dvp-relayer operator …` against the served API (a subprocess: this event loop keeps serving)."""
    env = worker_env(net.settings([])) | {"DVP_API_TOKEN": OPERATOR, "DVP_ENV_FILE": "/nonexistent"}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("dvp-relayer")), "operator", *args, "--api-url", f"http://127.0.0.1:{port}",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out or b"null")


async def test_a_paused_intake_is_refused_by_every_worker_and_logged_with_who_paused_it(net: Net):
    one = await net.engine([net.seller, net.buyer])
    two = await net.engine([net.seller, net.buyer], redis_url=one.settings.redis_url)  # another worker, same Redis
    try:
        async with api_session(one, "", tokens=TOKENS) as http:
            port = http._base_url.port
            status, body = await _call(http, "POST", "/v1/operator/intake", SUBMIT, {"paused": True})
            assert status == 403 and body["error"] == "forbidden"  # a submit token may not pause
            code, state = await _cli(net, port, "pause", "--reason", "end-of-day reconciliation")
            assert code == 0 and state["paused"] is True and state["reason"] == "end-of-day reconciliation"
            assert state["by"].startswith("api:") and OPERATOR not in json.dumps(state)  # a fingerprint, not the token

            signed = await net.instruction()
            status, body = await _call(http, "POST", "/v1/trades", SUBMIT, signed.model_dump())
            assert status == 503 and body["error"] == "intake_paused" and "end-of-day" in body["message"]
            await asyncio.sleep(1.1)  # the other worker's cached view of the pause
            for engine in (one, two):
                try:
                    await engine.intake(signed)
                    raise AssertionError("a paused worker accepted a trade")
                except Exception as exc:  # noqa: BLE001 - IntakePaused, checked by its code
                    assert getattr(exc, "code", None) == "intake_paused", exc
            assert await one.store.get(signed.instruction.tradeId) is None  # nothing written
            await drive(one, [], until=set(), timeout=1.5)
            assert metrics.INTAKE_PAUSED._value.get() == 1
            log = await one.store.r.xrange(OPERATOR_LOG)
            assert [e["action"] for _, e in log][-1] == "pause_intake"
            assert log[-1][1]["actor"] == token_actor(OPERATOR)

            code, state = await _cli(net, port, "resume")
            assert code == 0 and state["paused"] is False
            status, _ = await _call(http, "POST", "/v1/trades", SUBMIT, signed.model_dump())
            assert status == 202
            tid = signed.instruction.tradeId
            assert (await drive(one, [tid], timeout=60))[tid] == TradeState.SETTLED  # open trades were never held
            assert metrics.INTAKE_PAUSED._value.get() == 0
    finally:
        await close_engine(two)
        await close_engine(one)


async def test_a_cancel_ends_a_trade_nothing_was_locked_for_and_is_refused_once_a_lock_exists(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        async with api_session(engine, "", tokens=TOKENS) as http:
            # MATCHED, not driven yet: nothing planned, nothing on chain
            signed = await net.instruction()
            tid = signed.instruction.tradeId
            assert await engine.intake(signed)
            seller_st = await net.balance(net.st, net.st_token, net.seller.address)
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/cancel", SUBMIT, {"reason": "x"})
            assert status == 403
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/cancel", OPERATOR,
                                       {"reason": "booked twice"})
            assert status == 200 and body["state"] == "ABORTED", body
            audit = await engine.store.audit(tid)
            assert {"event": "cancelled", "actor": token_actor(OPERATOR)}.items() <= audit[-1].items()
            await drive(engine, [tid], until=set(), timeout=3)
            assert (await engine.store.get(tid)).state == TradeState.ABORTED
            assert await net.balance(net.st, net.st_token, net.seller.address) == seller_st  # never locked

            # driven to its ST lock: refused, and the trade goes on to settle
            locked = await net.instruction()
            ltid = locked.instruction.tradeId
            assert await engine.intake(locked)
            assert (await drive(engine, [ltid], until={TradeState.ST_LOCKED}, timeout=60))[ltid] in (
                TradeState.ST_LOCKED, TradeState.SC_LOCKED, TradeState.SC_CLAIMED, TradeState.SETTLED)
            status, body = await _call(http, "POST", f"/v1/trades/{ltid}/cancel", OPERATOR, {})
            assert status == 409 and body["error"] == "not_cancellable"
            assert (await drive(engine, [ltid], timeout=60))[ltid] == TradeState.SETTLED

            # still MATCHED here, but a lock is already on chain (the other firm's seller, not confirmed by us)
            foreign = await net.instruction()
            ftid, ins = foreign.instruction.tradeId, foreign.instruction
            buyer_only = await net.engine([net.buyer], redis_url=engine.settings.redis_url)
            try:
                assert await buyer_only.intake(foreign)
            finally:
                await close_engine(buyer_only)
            from adapters.contracts import encode_call

            await net.sender(net.st, net.seller).transact(net.doc["st"]["escrow"], encode_call(
                "HashedTimelockEscrow", "lockTokens", ins.trade_id_bytes, ins.stToken, ins.stAmount,
                ins.buyerStAccount, hashlib.sha256(os.urandom(32)).digest(), await net.st.now() + 300))
            assert (await engine.store.get(ftid)).state == TradeState.MATCHED
            status, body = await _call(http, "POST", f"/v1/trades/{ftid}/cancel", OPERATOR, {})
            assert status == 409 and body["error"] == "not_cancellable" and "on chain" in body["message"]

            status, body = await _call(http, "POST", "/v1/trades/0x" + "ab" * 32 + "/cancel", OPERATOR, {})
            assert status == 404
    finally:
        await close_engine(engine)
