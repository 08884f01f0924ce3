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
                          "--workdir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["raw_ceiling"]["tx_per_s"] > 0 and doc["raw_ceiling"]["erc20_transfers"] == 80
    on, off = doc["batching_on"], doc["batching_off"]
    assert on["trades"] == off["trades"] == 20
    assert on["transactions"] < off["transactions"] and on["gas_per_dvp"] < off["gas_per_dvp"]
    lat = doc["latency_run"]
    assert 0 < lat["latency_s"]["p50"] <= lat["latency_s"]["p99"] and lat["latency_blocks"]["p50"] >= 1
    assert doc["targets"]["latency_p50_within_1s_of_floor"]["floor_s"] > 0
