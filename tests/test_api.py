"""The HTTP API of a real worker process (engine + API) on the two-chain devnet."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from deploy.processes import free_port
from relayer.api import ROUTES
from relayer.openapi import OPENAPI
from relayer.store import Store
from tests.relayer_kit import Net, Worker

TOKEN = "test-token-" + "x" * 20
# the fuzz submits and reads with a submit token: with an operator's it would pause intake at random, and every
# later good trade would then be answered 503 (test_operator.py covers the operator calls)
FUZZ_TOKEN = "fuzz-token-" + "f" * 20


@pytest.fixture(scope="module")
async def api(net: Net, tmp_path_factory):
    port = free_port()
    settings = net.settings([net.seller, net.buyer], api_port=port, api_tokens=f"{TOKEN},submit:{FUZZ_TOKEN}")
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    worker = Worker(settings, tmp_path_factory.mktemp("api") / "worker.log").start()
    await worker.api_up(port)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield http, store, port, worker
    assert worker.terminate() == 0
    await store.r.flushdb()
    await store.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(http, body, headers=AUTH, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post("/v1/trades", data=data, headers={**headers, "Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def test_submit_settle_and_read_back(api, net: Net):
    http, store, _, _ = api
    signed = (await net.instruction(stAmount=2, scAmount=2_000)).model_dump()
    status, body = await _post(http, signed)
    assert status == 202 and body["created"] is True, body
    tid = body["trade_id"]
    status, again = await _post(http, signed)  # same instruction again: same answer, nothing duplicated
    assert status == 202 and again["trade_id"] == tid and again["created"] is False
    deadline = time.monotonic() + 30
    doc = {}
    while time.monotonic() < deadline:
        async with http.get(f"/v1/trades/{tid}") as r:
            doc = await r.json()
        if doc["state"] == "SETTLED":
            break
        await asyncio.sleep(0.2)
    assert doc["state"] == "SETTLED"
    for leg in ("st", "sc"):
        assert doc["legs"][leg]["lock"]["block"] and doc["legs"][leg]["claim"]["tx"].startswith("0x")
    assert doc["timelocks"]["st"] and doc["timelocks"]["sc"] and doc["timelocks"]["sc"] < doc["timelocks"]["st"]
    assert [e["event"] for e in doc["timeline"]][0] == "accepted"
    assert "secret" not in json.dumps(doc).lower().replace("secret_created", "")
    async with http.get("/v1/trades", params={"state": "SETTLED", "limit": "10"}) as r:
        listed = await r.json()
    assert tid in [t["trade_id"] for t in listed["items"]]
    async with http.get("/v1/trades", params={"state": "ABORTED"}) as r:
        assert tid not in [t["trade_id"] for t in (await r.json())["items"]]


async def test_same_id_other_terms_is_409(api, net: Net):
    http, *_ = api
    first = await net.instruction()
    assert (await _post(http, first.model_dump()))[0] == 202
    other = await net.instruction(tradeId=first.instruction.tradeId, stAmount=3)
    status, body = await _post(http, other.model_dump())
    assert (status, body["error"]) == (409, "conflicting_trade_id")


def _mutate(doc, **fields):
    out = json.loads(json.dumps(doc))
    out["instruction"].update(fields)
    return out


async def test_bad_input_gets_a_4xx_code_and_nothing_is_written(api, net: Net):
    http, store, _, _ = api
    good = (await net.instruction()).model_dump()
    ins = good["instruction"]
    before = await store.list_trades(0, 10_000)
    untrusted = (await net.instruction(pts_key=net.buyer.key)).model_dump()
    other_venue = (await net.instruction(salt=bytes(32))).model_dump()  # the trusted PTS key, another deployment
    expired = (await net.instruction(deadline=1)).model_dump()
    unknown_chain = (await net.instruction(scChainId=424242)).model_dump()
    from eth_utils import to_checksum_address

    unknown_token = (await net.instruction(stToken=to_checksum_address("0x" + "ab" * 20))).model_dump()
    bad_checksum = ins["sellerStAccount"][:2] + ins["sellerStAccount"][2:].swapcase()
    cases = [
        (None, b"{not json", 400, "invalid_json"),
        (None, b"[]", 400, "invalid_field"),
        (_mutate(good, stAmount="10"), None, 400, "invalid_field"),
        (_mutate(good, stAmount=0), None, 400, "invalid_field"),
        (_mutate(good, scAmount=-1), None, 400, "invalid_field"),
        (_mutate(good, scAmount=2**256), None, 400, "invalid_field"),
        (_mutate(good, sellerStAccount=bad_checksum), None, 400, "invalid_field"),
        (untrusted, None, 403, "untrusted_signer"),
        (other_venue, None, 403, "untrusted_signer"),
        (expired, None, 422, "deadline_too_close"),
        (unknown_chain, None, 422, "unknown_chain"),
        (unknown_token, None, 422, "unknown_token"),
        (_mutate(good, stAmount=11), None, 403, "untrusted_signer"),  # tampered after signing
        (None, b'{"pad": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
    ]
    for body, raw, status, code in cases:
        got_status, got = await _post(http, body, raw=raw)
        assert (got_status, got["error"]) == (status, code), (code, got)
        assert got["message"]
    assert (await _post(http, good, headers={}))[0] == 401
    assert (await _post(http, good, headers={"Authorization": "Bearer wrong"}))[0] == 401
    assert await store.list_trades(0, 10_000) == before


async def test_openapi_document_matches_the_routes(api):
    http, *_ = api
    async with http.get("/openapi.json") as r:
        doc = await r.json()
    assert doc == json.loads(json.dumps(OPENAPI))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, p.replace("{trade_id}", "{trade_id}")) for m, p, _ in ROUTES}
    assert documented == served


async def test_health_readiness_and_metrics(api):
    http, *_ = api
    async with http.get("/healthz") as r:
        assert r.status == 200
    async with http.get("/readyz") as r:
        body = await r.json()
        assert r.status == 200 and body["ready"] is True and body["checks"]["redis"] is True
    async with http.get("/metrics") as r:
        text = await r.text()
    for name in ("dvp_trades", "dvp_settlement_seconds_bucket", "dvp_follower_lag_blocks", "dvp_rpc_errors_total",
                 "dvp_gas_used_total"):
        assert name in text, name
    assert 'dvp_gas_used_total{action="lock_st",leg="st"}' in text


async def test_unknown_trade_is_404(api):
    http, *_ = api
    async with http.get("/v1/trades/0x" + "00" * 32) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_fuzz_with_every_schemathesis_check_against_the_served_openapi_document(api):
    """schemathesis with --checks all (server errors, status codes and response bodies conforming to the document,
    bad input refused, good input accepted, auth, methods), bounded in examples and time."""
    import os
    import sys

    _, _, port, _ = api
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe), "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
           f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "-H",
           f"Authorization: Bearer {FUZZ_TOKEN}", "--max-examples", "25", "--seed", "13", "--max-time", "45",
           "--generation-deterministic", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(Path(__file__).parents[1])}
    out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout.lower()


async def test_intake_while_redis_is_down_answers_503_with_retry_after(net: Net):
    """Found by the long chaos run: a Redis restart during intake answered 500; it is a 503 to retry."""
    from aiohttp.test_utils import TestClient, TestServer

    from relayer.api import make_app
    from relayer.service import build_engine, close_engine

    settings = net.settings([net.seller, net.buyer], redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody
    engine = build_engine(settings)
    await engine.st.ledger.chain.connect()
    await engine.sc.ledger.chain.connect()
    engine.started = True  # connected to the chains; Redis is what is missing
    client = TestClient(TestServer(make_app(engine.read_model, api_tokens=[TOKEN])))
    await client.start_server()
    try:
        signed = (await net.instruction()).model_dump()
        resp = await client.post("/v1/trades", data=json.dumps(signed).encode(),
                                 headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "dependency_unavailable"
    finally:
        await client.close()
        await close_engine(engine)


@pytest.mark.parametrize("opener", ["[", "{\"a\":"])
async def test_deeply_nested_json_is_refused_and_the_worker_keeps_settling(api, net: Net, opener):
    """Issue 13: a 65,536-byte body of '[' crashed the worker with SIGSEGV (eth_account's py_ecc raises Python's
    recursion limit to 100,000, so the C JSON parser recursed until the stack overflowed): every trade stopped."""
    http, store, _, worker = api
    body = (opener * (65_536 // len(opener)))[:65_536].encode()
    async with http.post("/v1/trades", data=body, headers={**AUTH, "Content-Type": "application/json"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_json"
    assert worker.proc.poll() is None, "the worker died"
    signed = (await net.instruction(stAmount=1, scAmount=1_111)).model_dump()
    status, body = await _post(http, signed)
    assert status == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rec = await store.get(body["trade_id"])
        if rec is not None and rec.state.value == "SETTLED":
            break
        await asyncio.sleep(0.2)
    assert rec is not None and rec.state.value == "SETTLED"


def test_importing_the_relayer_leaves_a_sane_recursion_limit():
    import subprocess
    import sys

    code = "import relayer.api, eth_account, json, sys; print(sys.getrecursionlimit())\n" \
           "try:\n    json.loads('[' * 65536)\nexcept RecursionError:\n    print('refused')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])  # -11 / 139: the parser overflowed the stack
    limit, verdict = out.stdout.split()
    assert int(limit) <= 10_000 and verdict == "refused"


@pytest.mark.parametrize("wrong", ["escrow_without_code", "no_tokens"])
async def test_readiness_is_red_while_the_configuration_cannot_work(net: Net, tmp_path, wrong):
    port = free_port()
    over = {"escrow_without_code": dict(st_escrow=net.pts.address), "no_tokens": dict(sc_tokens="")}[wrong]
    settings = net.settings([net.seller], api_port=port, **over)
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await worker.api_up(port, ready=False)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/readyz") as r:
                doc = await r.json()
                assert r.status == 503 and not doc["ready"]
        reason = doc["checks"]["st" if wrong == "escrow_without_code" else "sc"]
        assert ("no contract at DVP_ST_ESCROW" if wrong == "escrow_without_code" else "DVP_SC_TOKENS is empty") in reason
    finally:
        assert worker.terminate() == 0


async def test_what_the_full_schemathesis_run_found_answers_4xx_with_its_headers(api):
    """Fuzzed with every schemathesis check: a non-ASCII trade id answered 500, an offset beyond Redis's range 503
    (taken for an outage), a wrong method 405 without an Allow header."""
    http, *_ = api
    async with http.get("/v1/trades/%C3%A9%F0%9F%92%A5") as r:
        assert r.status in (400, 404) and (await r.json())["error"] in ("invalid_field", "not_found")
    async with http.get("/v1/trades", params={"offset": "16193370864135176192"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_field"
    async with http.delete("/v1/trades") as r:
        assert r.status == 405 and {m.strip() for m in r.headers["Allow"].split(",")} >= {"GET", "POST"}
        assert (await r.json())["error"] == "method_not_allowed"


async def test_bulk_intake_answers_each_instruction_on_its_own_and_the_valid_ones_settle(api, net: Net):
    http, store, _, _ = api
    good = [(await net.instruction(stAmount=1, scAmount=3_000 + i)).model_dump() for i in range(5)]
    known = good[0]
    conflicting = (await net.instruction(tradeId=known["instruction"]["tradeId"], scAmount=9)).model_dump()
    forged = _mutate((await net.instruction()).model_dump(), stAmount=10**6)  # signed terms altered
    async with http.post("/v1/trades", json=known, headers=AUTH) as r:
        assert r.status == 202
    body = {"trades": [*good, conflicting, forged, {"instruction": 7}]}
    async with http.post("/v1/trades/bulk", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        results = (await r.json())["results"]
    assert [r["index"] for r in results] == list(range(8))
    assert results[0]["created"] is False and all(r["created"] is True for r in results[1:5])
    assert all("error" not in r and r["trade_id"] == g["instruction"]["tradeId"] for r, g in zip(results, good))
    assert {r["state"] for r in results[1:5]} <= {"MATCHED", "ST_LOCKED"}
    assert results[5]["error"] == "conflicting_trade_id"
    assert results[6]["error"] in ("untrusted_signer", "bad_signature")
    assert results[7]["error"] == "invalid_field" and "trade_id" not in results[7]
    assert not await store.r.exists(f"dvp:trade:{forged['instruction']['tradeId']}")
    ids = [g["instruction"]["tradeId"] for g in good]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {(await store.get(t)).state.value for t in ids}
        if states == {"SETTLED"}:
            break
        await asyncio.sleep(0.5)
    assert states == {"SETTLED"}
    for bad in ({"trades": []}, {"trades": [good[1]] * 501}, [good[1]], {"trades": [good[1]], "x": 1}):
        async with http.post("/v1/trades/bulk", json=bad, headers=AUTH) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_field"
    async with http.post("/v1/trades/bulk", json={"trades": [good[1]]}) as r:
        assert r.status == 401


async def test_bulk_refuses_items_that_are_not_objects_and_advertises_only_post(api):
    http, *_ = api
    async with http.post("/v1/trades/bulk", json={"trades": [7098]}, headers=AUTH) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_field"
    async with http.options("/v1/trades/bulk", headers=AUTH) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
    async with http.delete("/v1/trades", headers=AUTH) as r:
        assert r.status == 405 and set(r.headers["Allow"].split(",")) == {"GET", "POST"}
    async with http.get("/v1/trades/bulk", headers=AUTH) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"


async def test_single_submissions_sent_together_are_each_answered_on_their_own(api, net: Net):
    """Concurrent single POSTs are admitted together (one accept_many): a forged or conflicting one among them is
    refused alone, the good ones are accepted, each with its own trade id."""
    http, store, _, _ = api
    good = [(await net.instruction(stAmount=1, scAmount=5_000 + i)).model_dump() for i in range(12)]
    conflicting = (await net.instruction(tradeId=good[0]["instruction"]["tradeId"], scAmount=9)).model_dump()
    forged = _mutate((await net.instruction()).model_dump(), stAmount=10**6)
    answers = await asyncio.gather(*(_post(http, body) for body in [*good, good[1], forged, conflicting]))
    for (status, doc), body in zip(answers[:12], good):
        assert status == 202 and doc["trade_id"] == body["instruction"]["tradeId"], doc
    assert answers[12][0] == 202 and answers[12][1]["trade_id"] == good[1]["instruction"]["tradeId"]
    assert sum(doc.get("created") is True for _, doc in answers[:13]) == 12  # the repeat of good[1] is not new
    assert answers[13][0] == 403 and answers[13][1]["error"] in ("untrusted_signer", "bad_signature"), answers[13]
    assert answers[14][0] == 409 and answers[14][1]["error"] == "conflicting_trade_id", answers[14]
    assert not await store.r.exists(f"dvp:trade:{forged['instruction']['tradeId']}")
