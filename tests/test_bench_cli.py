"""`dvp-relayer bench` end to end on its own private devnet, kept small: the command runs, every figure is
measured (not a constant), and batching does what it is for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("dvp-relayer"))


@pytest.mark.slow
def test_a_small_bench_prints_measured_figures_and_batching_saves_gas_and_transactions(tmp_path):
    out = subprocess.run([EXE, "bench", "--trades", "20", "--latency-trades", "3", "--raw-transfers", "40",
                          "--rate", "4,8", "--duration", "4", "--workdir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["raw_ceiling"]["tx_per_s"] > 0 and doc["raw_ceiling"]["erc20_transfers"] == 80
    on, off = doc["batching_on"], doc["batching_off"]
    assert on["trades"] == off["trades"] == 20
    assert on["transactions"] < off["transactions"] and on["gas_per_dvp"] < off["gas_per_dvp"]
    assert 3 <= on["decisions_per_dvp"] <= 50  # event-driven: a handful of decisions per trade, read from /metrics
    lat = doc["latency_run"]
    assert 0 < lat["latency_s"]["p50"] <= lat["latency_s"]["p99"] and lat["latency_blocks"]["p50"] >= 1
    assert doc["targets"]["latency_p50_le_3_blocks"]["p50_blocks"] == lat["latency_blocks"]["p50"]
    runs = doc["open_loop"]["runs"]  # open loop: every arrival submitted on schedule and settled
    assert [r["rate_per_s"] for r in runs] == [4, 8] and [r["submitted"] for r in runs] == [16, 32]
    for r in runs:
        assert r["settled_total"] == r["submitted"] and 0 <= r["achieved_dvp_per_s"] <= r["rate_per_s"] * 1.5
        assert r["submit_seconds"] <= 4 + 1 and r["relayer_cpu_ms_per_dvp"] > 0
        assert r["backlog_growth_second_half"] <= r["submitted"] and "achieved_dvp_per_s_second_half" in r
        assert r["chains"]["st"]["blocks"] > 0 and r["chains"]["sc"]["gas_per_block_max"] > 0
    assert "sustained_ge_250_dvp_per_s" in doc["targets"]
