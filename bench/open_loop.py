"""Open-loop load: trades arrive at a constant rate R for S seconds, whatever the worker does with them.

A burst tells how fast a backlog drains; an RTGS venue sends trades all day, so the question here is the highest
rate the worker keeps up with. Trade i is due at t0 + i/R; every TICK the trades due so far go out in one bulk
POST (a PTS batching its matches). At t0 + S the backlog (submitted, not yet SETTLED) is read, then the rest are
waited for (bounded) so every trade's latency counts. Figures per rate: achieved DvP/s in the window, p50/p99
match→SETTLED in seconds and blocks, the backlog, relayer CPU per DvP, gas per DvP and gas used per block of
each chain (a chain-bound run shows blocks near their limit).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.runner import Bench, _proc_usage
from relayer.store import Store

TICK = 0.1  # seconds between bulk submissions
BULK_MAX = 500  # the API's most instructions per bulk POST
DRAIN_LIMIT = 180.0  # seconds to wait after the window for the last trades to settle


async def _post_bulk(http: aiohttp.ClientSession, bodies: list[str]) -> list[str]:
    payload = '{"trades":[' + ",".join(bodies) + "]}"
    async with http.post("/v1/trades/bulk", data=payload, headers={
            "Authorization": "Bearer bench", "Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        results = (await resp.json())["results"]
    refused = [r for r in results if r.get("error")]
    assert not refused, refused[:3]
    return [r["trade_id"] for r in results]


async def _settled(store: Store) -> int:
    return (await store.terminal_counts()).get("SETTLED", 0)


async def _blocks_gas(b: Bench, first: dict[str, int], last: dict[str, int]) -> dict[str, Any]:
    """Per chain: blocks in the run, mean and highest gas used per block, and the block gas limit."""
    out = {}
    for name, chain in (("st", b.st), ("sc", b.sc)):
        used, limit = [], 0
        for n in range(first[name] + 1, last[name] + 1):
            block = await chain.call(lambda w3, n=n: w3.eth.get_block(n))
            used.append(int(block["gasUsed"]))
            limit = int(block["gasLimit"])
        out[name] = {"blocks": len(used), "gas_per_block_mean": round(sum(used) / max(1, len(used))),
                     "gas_per_block_max": max(used, default=0), "block_gas_limit": limit,
                     "fullest_block_share": round(max(used, default=0) / limit, 3) if limit else None}
    return out


async def rate_run(b: Bench, db: int, rate: float, duration: float) -> dict[str, Any]:
    """One worker, trades at `rate` per second for `duration` seconds (batching on, DVP_BATCH_MAX 1000)."""
    n = max(1, round(rate * duration))
    bodies = [await b._instruction(i) for i in range(n)]  # signed before the clock starts: the PTS's cost
    proc, log, port = await b.start_worker(f"rate{rate:g}", db, 1000)
    store = Store.from_url(f"redis://127.0.0.1:{b.redis.port}/{db}")
    try:
        cpu0 = _proc_usage(proc.pid)[0]
        first = {"st": await b.st.block_number(), "sc": await b.sc.block_number()}
        ids: list[str] = []
        heads: dict[str, int] = {}
        sent = 0
        t0 = time.monotonic()
        mid: tuple[float, int, int] | None = None  # (time, submitted, settled) at half the window
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            while sent < n:
                if mid is None and time.monotonic() - t0 >= duration / 2:
                    mid = (time.monotonic(), sent, await _settled(store))
                due = min(n, int((time.monotonic() - t0) * rate) + 1)
                while sent < due:
                    chunk = bodies[sent:min(due, sent + BULK_MAX)]
                    head = await b.st.block_number()
                    for tid in await _post_bulk(http, chunk):
                        ids.append(tid)
                        heads[tid] = head
                    sent += len(chunk)
                await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic(), TICK if sent < n else 0.0))
            submit_seconds = time.monotonic() - t0
            await asyncio.sleep(max(0.0, t0 + duration - time.monotonic()))
            window = time.monotonic() - t0
            settled_in_window = await _settled(store)
            if mid is None:
                mid = (t0, 0, 0)
            cpu_window = _proc_usage(proc.pid)[0] - cpu0
            limit = time.monotonic() + DRAIN_LIMIT
            while await _settled(store) < n and time.monotonic() < limit:
                await asyncio.sleep(0.2)
            drained = time.monotonic() - t0
        settled = await _settled(store)
        cpu = _proc_usage(proc.pid)[0] - cpu0
        last = {"st": await b.st.block_number(), "sc": await b.sc.block_number()}
        done = [tid for tid in ids if (rec := await store.get(tid)) is not None and rec.state.value == "SETTLED"]
        summary = await b._summarise(store, done, heads, drained, cpu, _proc_usage(proc.pid)[1], 0.0)
        return {
            "rate_per_s": rate, "duration_s": duration, "submitted": n, "submit_seconds": round(submit_seconds, 2),
            "achieved_dvp_per_s": round(settled_in_window / window, 1),
            # the second half of the window, once the pipeline is full: what the worker keeps up with
            "achieved_dvp_per_s_second_half": round((settled_in_window - mid[2]) / (t0 + window - mid[0]), 1),
            "backlog_at_end": n - settled_in_window,  # includes the trades still in flight (≈ rate × latency)
            "backlog_growth_second_half": (n - settled_in_window) - (mid[1] - mid[2]),
            "settled_total": settled, "seconds_until_all_settled": round(drained, 1) if settled == n else None,
            "latency_s": summary["latency_s"], "latency_blocks": summary["latency_blocks"],
            "reaction_ms": summary["reaction_ms"],
            "relayer_cpu_ms_per_dvp": round(1000 * cpu / max(1, settled), 2),
            "relayer_cpu_share_in_window": round(cpu_window / window, 2),  # of one core
            "gas_per_dvp": summary["gas_per_dvp"], "transactions": summary["transactions"],
            "relayer_peak_rss_mb": summary["relayer_peak_rss_mb"],
            "chains": await _blocks_gas(b, first, last),
        }
    finally:
        b.stop_worker(proc, log)
        await store.close()


def sustained(runs: list[dict[str, Any]], block_time: float, p99_blocks: int = 6) -> dict[str, Any]:
    """The highest rate whose p99 stayed within `p99_blocks` blocks and whose backlog did not grow over the
    second half of the window by more than one second of arrivals (in-flight trades are a backlog too, but a
    constant one)."""
    kept = [r for r in runs if r["latency_blocks"]["p99"] <= p99_blocks
            and r["backlog_growth_second_half"] <= r["rate_per_s"] and r["settled_total"] == r["submitted"]]
    best = max(kept, key=lambda r: r["rate_per_s"], default=None)
    return {"rule": f"p99 match->SETTLED <= {p99_blocks} blocks ({p99_blocks * block_time:g} s) and the backlog "
                    "grew by <= one second of arrivals over the second half of the window",
            "sustained_dvp_per_s": best["rate_per_s"] if best else None,
            "cpu_ms_per_dvp_there": best["relayer_cpu_ms_per_dvp"] if best else None}


async def open_loop(b: Bench, rates: list[float], duration: float, first_db: int = 8) -> dict[str, Any]:
    """Every rate, one after the other on the same devnet (fresh worker and Redis db each)."""
    runs = []
    for i, rate in enumerate(rates):
        b.echo(f"open loop: {rate:g} trades/s for {duration:g} s ...")
        runs.append(await rate_run(b, first_db + i, rate, duration))
        b.echo(f"  {json.dumps(runs[-1])}")
    return {"runs": runs, "sustained": sustained(runs, b.cfg.block_time)}
