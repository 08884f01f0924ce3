"""Reconciliation and export on real components: `dvp-relayer report` lists the trades accepted in a range with
token symbols and amounts in token units, and `--verify` checks each row against both chains — it passes for
what happened, and names a record that disagrees with the chains."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from relayer import report as rpt
from relayer.operator import cli_actor
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, api_session, close_engine, drive, worker_env


async def _cli(settings, *args: str) -> tuple[int, str, str]:
    env = worker_env(settings) | {"DVP_ENV_FILE": "/nonexistent"}
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).with_name("dvp-relayer")), "report", *args,
                                                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_report_lists_the_range_with_symbols_and_verify_agrees_with_the_chains_or_says_where_not(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        start = time.time() - 1
        settled = await net.instruction()
        cancelled = await net.instruction()
        for signed in (settled, cancelled):
            assert await engine.intake(signed)
        await engine.read_model.cancel(cancelled.instruction.tradeId, cli_actor(), "test")
        tid = settled.instruction.tradeId
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        end = time.time() + 1

        trades = await rpt.trades_between(engine.store, start, end)
        assert {rec.trade_id for rec, _ in trades} == {tid, cancelled.instruction.tradeId}
        assert await rpt.trades_between(engine.store, start - 3600, start) == []  # the range is honoured
        rows = await rpt.build_rows(engine.routes, trades)
        assert await rpt.verify(engine.routes, rows, trades) == 0, [r.problems for r in rows]
        row = next(r for r in rows if r.trade_id == tid)
        assert row.st_token == "DGB30" and row.sc_token == "DJPY" and row.st_claim_tx and row.sc_claim_tx
        assert row.gas_used > 0
        totals = rpt.daily_totals(rows)
        assert any(t["token"] == "DGB30" and t["settled"] == 1 for t in totals)

        iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")  # noqa: E731
        code, out, err = await _cli(engine.settings, "--from", iso(start), "--to", iso(end + 1), "--verify")
        assert code == 0, err
        parsed = list(csv.DictReader(io.StringIO(out)))
        assert {r["trade_id"] for r in parsed} == {tid, cancelled.instruction.tradeId}
        assert "0 trade(s) disagree" in err
        code, out, _ = await _cli(engine.settings, "--from", iso(start), "--to", iso(end + 1), "--format", "json")
        assert code == 0 and json.loads(out)["daily_totals"]

        async with api_session(engine, "r" * 24) as http:
            auth = {"Authorization": "Bearer " + "r" * 24}
            async with http.get("/v1/reports", params={"from": iso(start), "to": iso(end + 1), "verify": "true"},
                                headers=auth) as r:
                assert r.status == 200
                doc = await r.json()
            assert {t["trade_id"] for t in doc["trades"]} == {tid, cancelled.instruction.tradeId}
            assert all(t["problems"] == [] for t in doc["trades"]) and doc["daily_totals"]
            async with http.get("/v1/reports", params={"from": "yesterday", "to": iso(end)}, headers=auth) as r:
                assert r.status == 400 and (await r.json())["error"] == "invalid_field"

        # a record that says ABORTED although both swaps were claimed on chain
        await engine.store.r.hset(f"dvp:trade:{tid}", "state", "ABORTED")
        code, out, err = await _cli(engine.settings, "--from", iso(start), "--to", iso(end + 1), "--verify")
        assert code == 1 and "1 trade(s) disagree" in err
        bad = next(r for r in csv.DictReader(io.StringIO(out)) if r["trade_id"] == tid)
        assert "ABORTED but the chains show 2 of 2 swaps claimed" in bad["problems"]
    finally:
        await close_engine(engine)
