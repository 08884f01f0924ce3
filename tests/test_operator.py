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


async def test_a_trade_holding_no_partys_key_is_marked_watch_only_and_shown_so_a_trade_we_act_on_is_refused(net: Net):
    watcher = await net.engine([net.pts])  # a gas key on both ledgers, neither party's key
    acting = await net.engine([net.seller], redis_url=watcher.settings.redis_url)
    try:
        async with api_session(watcher, "", tokens=TOKENS) as http:
            signed = await net.instruction()
            tid = signed.instruction.tradeId
            assert await watcher.intake(signed)
            status, body = await _call(http, "GET", "/v1/overview", SUBMIT)
            (row,) = [t for t in body["trades"] if t["trade_id"] == tid]
            assert row["watch_only"] is None and "no key of either party" in row["waiting"]["on"]
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/watch-only", SUBMIT, {"reason": "x"})
            assert status == 403
            code, body = await _cli(net, http._base_url.port, "watch-only", tid, "--reason", "other firm's trade")
            assert code == 0 and body == {"trade_id": tid, "action": "watch_only", "state": "MATCHED"}, body
            audit = await watcher.store.audit(tid)
            assert {"event": "marked_watch_only", "actor": token_actor(OPERATOR),
                    "reason": "other firm's trade"}.items() <= audit[-1].items()
            status, body = await _call(http, "GET", "/v1/overview", SUBMIT)
            (row,) = [t for t in body["trades"] if t["trade_id"] == tid]
            assert row["watch_only"] == token_actor(OPERATOR) and row["waiting"]["on"].startswith("marked watch-only")
        async with api_session(acting, "", tokens=TOKENS) as http:  # this relayer holds the seller's key
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/watch-only", OPERATOR, {})
            assert status == 409 and body["error"] == "not_watch_only" and "seller's or the buyer's key" in body["message"]
            status, body = await _call(http, "POST", "/v1/trades/0x" + "cd" * 32 + "/watch-only", OPERATOR, {})
            assert status == 404
    finally:
        await close_engine(acting)
        await close_engine(watcher)


async def test_a_redrive_reads_the_chains_again_and_a_trade_whose_lock_event_was_missed_settles(net: Net):
    """A node dropped the logs (and left them out of its block headers' blooms) while the seller's ST lock was
    mined: the follower read past it and shows no lock, so the trade would sit until T_st. The node is fixed; the
    operator re-drives the trade: the worker reads both chains again from the trade's first blocks, sees the lock
    and settles well before T_st."""
    from chaos.lying_node import LyingNode

    real = net.doc["st"]["rpc_url"]
    proxy = await LyingNode(real).start()
    proxy.drop_logs = True
    proxy.hide_in_blooms = True  # its headers say nothing either (a node whose headers show them is caught alone)
    engine = await net.engine([net.seller, net.buyer], st_rpc_url=proxy.url)
    try:
        async with api_session(engine, "", tokens=TOKENS) as http:
            signed = await net.instruction()
            tid = signed.instruction.tradeId
            assert await engine.intake(signed)
            for _ in range(300):  # the lock goes out and is mined; the follower hears nothing of it
                await drive(engine, [tid], until=set(), timeout=0.2)
                if any(e["event"] == "lock_st_mined" for e in await engine.store.audit(tid)):
                    break
            await drive(engine, [tid], until=set(), timeout=3)  # the follower reads past the lock's block
            assert (await engine.store.get(tid)).state == TradeState.MATCHED
            proxy.drop_logs = False  # the node is fixed; its past answers are not read again by themselves
            await drive(engine, [tid], until=set(), timeout=3)
            assert (await engine.store.get(tid)).state == TradeState.MATCHED
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/redrive", OPERATOR, {"reason": "node fixed"})
            assert status == 202 and body["action"] == "redrive", body
            t_st = (await engine.store.get(tid)).get_int("t_st")
            assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
            assert await net.st.now() < t_st  # settled, not refunded at T_st
            events = [e for e in await engine.store.audit(tid)]
            names = [e["event"] for e in events]
            assert names.index("redrive_requested") < names.index("redriven") < names.index("claim_st_mined"), names
            redriven = next(e for e in events if e["event"] == "redriven")
            assert set(redriven["reread"]) == {"st", "sc"}
            status, body = await _call(http, "POST", f"/v1/trades/{tid}/redrive", OPERATOR, {})
            assert status == 409 and body["error"] == "trade_finished"
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_a_refund_sweep_asked_for_runs_on_the_sweeping_worker_and_reports_what_it_found(net: Net):
    engine = await net.engine([net.seller])  # the buyer's key is elsewhere: the trade stays open, waiting for it
    try:
        async with api_session(engine, "", tokens=TOKENS) as http:
            signed = await net.instruction()
            tid = signed.instruction.tradeId
            assert await engine.intake(signed)
            status, body = await _call(http, "POST", "/v1/operator/sweep", SUBMIT, {})
            assert status == 403
            status, body = await _call(http, "GET", "/v1/operator/sweep", SUBMIT)
            assert status == 200 and body == {"pending": None, "last": None}
            port = http._base_url.port
            cli = asyncio.create_task(_cli(net, port, "sweep", "--wait", "20"))
            while not cli.done():
                await drive(engine, [tid], until=set(), timeout=0.3)
            code, outcome = cli.result()
            assert code == 0, outcome
            assert outcome["requested_by"] == token_actor(OPERATOR) and outcome["trades_decided_again"] >= 1
            assert isinstance(outcome["refunds_due"], int)
            status, body = await _call(http, "GET", "/v1/operator/sweep", SUBMIT)
            assert body["pending"] is None and body["last"] == outcome
            log = await engine.store.r.xrange(OPERATOR_LOG)
            assert any(entry[1]["action"] == "refund_sweep" for entry in log)
    finally:
        await close_engine(engine)
