"""What a firm deploys: the built wheel, installed in a fresh venv outside the repository, settles a trade.

The worker must need neither the checkout (ABIs are package data) nor the build tooling (py-solc-x, solc, node).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relayer.store import Store
from tests.relayer_kit import Net, submit_trades, wait_all_settled, worker_env

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`): a wheel build and ~40 s of pip install
async def test_a_wheel_installed_worker_settles_a_trade_with_no_repository_on_disk(net: Net, tmp_path):
    out = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO),
               cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("dvp_relayer-*.whl")
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path, timeout=120).returncode == 0
    out = _run(str(venv / "bin" / "pip"), "install", "-q", str(wheel), cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    py = str(venv / "bin" / "python")
    # the runtime has no build tooling, and its code and ABIs come from the venv, not from the repository
    assert _run(py, "-c", "import solcx", cwd=tmp_path, timeout=60).returncode != 0
    where = _run(py, "-c", "import relayer, adapters.contracts as c; print(relayer.__file__); print(len(c.abi("
                 "'HashedTimelockEscrow')))", cwd=tmp_path, timeout=60)
    assert where.returncode == 0 and str(venv) in where.stdout and str(REPO) not in where.stdout, where

    settings = net.settings([net.seller, net.buyer])
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    env = worker_env(settings)
    env.pop("PYTHONPATH", None)
    log = open(tmp_path / "worker.log", "ab")
    proc = subprocess.Popen([str(venv / "bin" / "dvp-relayer"), "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        ids = await submit_trades(net, settings, 2, 700)
        await wait_all_settled(store, ids, 60)  # raises with the states unless every trade is SETTLED
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        log.close()
        await store.r.flushdb()
        await store.close()
