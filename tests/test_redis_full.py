"""Redis refusing writes (issue 18): at maxmemory with noeviction, intake answers 503 with Retry-After and writes
nothing of the refused trade; once memory is free again the same instruction is accepted. A real redis-server."""

from __future__ import annotations

import pytest

import json

from deploy.processes import RedisProcess, free_port
from relayer.store import ALL, INTAKE, OPEN, trade_key
from tests.relayer_kit import Net, api_session, close_engine

pytestmark = pytest.mark.slow  # fault injection: `make test-slow` (CI runs it after `make test`)

TOKEN = "full-redis-token-" + "q" * 16


async def test_a_full_redis_refuses_intake_with_503_and_writes_nothing(net: Net, tmp_path):
    server = RedisProcess(port=free_port(), data_dir=tmp_path, extra_args=(
        "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")).start()
    engine = await net.engine([net.seller, net.buyer], redis_url=server.url)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        r = engine.store.r
        filler = "x" * 50_000
        for i in range(400):  # fill it to the brim (not under dvp: — somebody else's data on a shared Redis)
            try:
                await r.set(f"other:{i}", filler)
            except Exception:  # noqa: BLE001 - the OOM refusal we are after
                break
        else:
            raise AssertionError("redis never filled up")
        signed = (await net.instruction()).model_dump()
        tid = signed["instruction"]["tradeId"]
        intake_before = await r.xlen(INTAKE) if await r.exists(INTAKE) else 0
        async with api_session(engine, TOKEN) as http:
            async with http.post("/v1/trades", data=json.dumps(signed), headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 503 and body["error"] == "dependency_unavailable", body
                assert resp.headers.get("Retry-After") == "1"
            bulk = {"trades": [signed]}
            async with http.post("/v1/trades/bulk", data=json.dumps(bulk), headers=headers) as resp:
                assert resp.status == 503
            assert not await r.exists(trade_key(tid))
            assert await r.zscore(OPEN, tid) is None and await r.zscore(ALL, tid) is None
            assert (await r.xlen(INTAKE) if await r.exists(INTAKE) else 0) == intake_before
            await r.delete(*[f"other:{i}" for i in range(400)])
            async with http.post("/v1/trades", data=json.dumps(signed), headers=headers) as resp:
                assert resp.status == 202 and (await resp.json())["created"] is True
    finally:
        await close_engine(engine)
        server.stop()
