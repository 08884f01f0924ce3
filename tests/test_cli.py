"""The CLI as a new user meets it: a configuration mistake is one clear line naming the variable and where it came
from (the environment or the env file), exit 2, never a traceback and never a secret."""

from __future__ import annotations

import shutil
import subprocess
import time
import sys
from pathlib import Path

import pytest

from deploy.processes import free_port, port_open, redis_server_binary
from tests.relayer_kit import Net, worker_env

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("dvp-relayer"))


def _run_with_file(lines: dict[str, str], cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`dvp-relayer ARGS` with every DVP_ variable in an env file (none in the environment)."""
    env_file = cwd / "relayer.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    env = {k: v for k, v in worker_env_base().items() if not k.startswith("DVP_")} | {"DVP_ENV_FILE": str(env_file)}
    return subprocess.run([EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def worker_env_base() -> dict[str, str]:
    import os

    return dict(os.environ)


@pytest.fixture
def good(net: Net) -> dict[str, str]:
    env = worker_env(net.settings([net.seller, net.buyer], api_port=0))
    return {k: v for k, v in env.items() if k.startswith("DVP_") and k != "DVP_ENV_FILE"}


def _one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-500:], out.stderr[-1500:])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("{")]  # JSON log lines aside
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-1500:]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("var, value, fragment", [
    ("DVP_CONFIRMATIONS", "two", "valid integer"),
    ("DVP_PARTY_KEYS", "0xabcd", "32-byte private key"),
    ("DVP_ST_RPC_URL", "127.0.0.1:8545", "http://"),
    ("DVP_ST_ESCROW", "0x1234", "20-byte hex address"),
    ("DVP_SECRET_KEY", "bm90LTMyLWJ5dGVz", "32 bytes"),
    ("DVP_PTS_DOMAIN_SALT", "0x12", "64 hex digits"),
])
def test_a_bad_value_in_the_env_file_is_one_line_naming_it_and_the_file(good, tmp_path, var, value, fragment):
    out = _run_with_file(good | {var: value}, tmp_path, "run")
    line = _one_line_error(out, var, str(tmp_path / "relayer.env"), fragment)
    if var == "DVP_PARTY_KEYS":
        assert "abcd" not in line  # a key (even a broken one) is never echoed


@pytest.mark.parametrize("var, fragment", [("DVP_SECRET_KEY", "must be set"), ("DVP_PTS_DOMAIN_SALT", "must be set"),
                                           ("DVP_ST_ESCROW", "must be set")])
def test_a_missing_required_value_is_one_line(good, tmp_path, var, fragment):
    _one_line_error(_run_with_file({k: v for k, v in good.items() if k != var}, tmp_path, "run"), var, fragment)


def test_a_wrong_redis_password_is_a_configuration_error_not_an_outage(good, tmp_path):
    port = free_port()
    redis = subprocess.Popen([redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--requirepass", "right-password"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if port_open(port):
                break
            import time

            time.sleep(0.05)
        out = _run_with_file(good | {"DVP_REDIS_URL": f"redis://:wrong-password@127.0.0.1:{port}/0"}, tmp_path, "run")
        line = _one_line_error(out, "DVP_REDIS_URL", "credentials")
        assert "wrong-password" not in line
    finally:
        redis.terminate()
        redis.wait(10)


def test_env_example_copied_as_the_readme_says_loads_and_says_what_is_missing(tmp_path):
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    env = {k: v for k, v in worker_env_base().items() if not k.startswith("DVP_")}
    out = subprocess.run([EXE, "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    _one_line_error(out, "DVP_ST_ESCROW")  # the first thing to fill in, not a validation traceback


async def test_sign_submit_and_status_go_through_a_running_workers_api(net: Net, tmp_path):
    """`dvp-relayer sign` writes trade.json for the devnet, `submit` posts it to the worker, `status` reads it back:
    each command as a user runs it, with one env file for the worker and the CLI."""
    import asyncio
    import json
    import time

    from tests.relayer_kit import Worker

    port = free_port()
    settings = net.settings([net.seller, net.buyer], api_port=port, api_tokens="cli-token-0123456789")
    lines = {k: v for k, v in worker_env(settings).items() if k.startswith("DVP_") and k != "DVP_ENV_FILE"}
    lines["DVP_DEMO_PTS_KEY"] = net.pts.key.hex()
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await worker.api_up(port)
        out = _run_with_file(lines, tmp_path, "sign", "--st-amount", "3", "--sc-amount", "3333", "--out", "t.json")
        assert out.returncode == 0, out.stderr[-1500:]
        trade_id = json.loads(out.stdout)["trade_id"]
        assert json.loads((tmp_path / "t.json").read_text())["instruction"]["tradeId"] == trade_id
        out = _run_with_file(lines, tmp_path, "submit", "t.json")
        assert out.returncode == 0 and json.loads(out.stdout)["created"] is True, (out.stdout, out.stderr[-1500:])
        out = _run_with_file(lines, tmp_path, "submit", "t.json")  # the same again: accepted, not created
        assert out.returncode == 0 and json.loads(out.stdout)["created"] is False
        state, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and state != "SETTLED":
            out = _run_with_file(lines, tmp_path, "status", trade_id)
            assert out.returncode == 0, out.stderr[-1500:]
            doc = json.loads(out.stdout)
            state = doc["state"]
            await asyncio.sleep(0.5)
        assert state == "SETTLED" and '"secret":' not in out.stdout  # the trade document has no secret field
        out = _run_with_file(lines, tmp_path, "status", "0x" + "00" * 32)
        assert out.returncode == 1 and json.loads(out.stdout)["error"] == "not_found"
        bad = _run_with_file(lines | {"DVP_API_TOKENS": "wrong-token-0123456789"}, tmp_path, "submit", "t.json")
        assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "unauthorized"
    finally:
        assert worker.terminate() == 0
    out = _run_with_file(lines, tmp_path, "submit", "t.json")  # nobody listening: one clear line, exit 3
    assert out.returncode == 3 and "no worker API answers" in out.stderr and "Traceback" not in out.stderr


def test_keygen_prints_a_fresh_key_the_worker_can_seal_secrets_with():
    from relayer.secrets import SecretBox, SecretDecryptError

    keys = [subprocess.run([EXE, "keygen"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
            for _ in range(2)]
    assert keys[0] != keys[1]
    box = SecretBox(keys[0])
    sealed = box.seal(b"\x07" * 32, "T-1")
    assert b"\x07" * 32 not in sealed.encode() and box.open(sealed, "T-1") == b"\x07" * 32
    with pytest.raises(SecretDecryptError):
        SecretBox(keys[1]).open(sealed, "T-1")  # another key cannot open it


@pytest.fixture
def own_anvil():
    """A chain of its own: the deployer's nonces must not race the session chain's cached ones."""
    from deploy.processes import AnvilProcess

    node = AnvilProcess(chain_id=31999, port=free_port()).start()
    yield node
    node.stop()


def test_deploy_puts_an_escrow_and_a_token_on_any_rpc_endpoint(own_anvil, tmp_path):
    import json

    from web3 import Web3

    from tests.chain_kit import dev_accounts

    env = dict(worker_env_base()) | {"DVP_DEPLOYER_KEY": dev_accounts(1)[0].key.hex()}
    out = subprocess.run([EXE, "deploy", "--rpc-url", own_anvil.url, "--kind", "st", "--token-name", "Bond A",
                          "--token-symbol", "BNDA"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    doc = json.loads(out.stdout)
    w3 = Web3(Web3.HTTPProvider(own_anvil.url))
    for addr in (doc["escrow"], *doc["tokens"].values()):
        assert len(w3.eth.get_code(Web3.to_checksum_address(addr))) > 0, addr
    assert "BNDA" in doc["tokens"]


@pytest.mark.parametrize("key, fragment", [("", "missing"), ("0x1234", "32-byte private key")])
def test_deploy_without_a_usable_key_is_one_line(tmp_path, key, fragment):
    env = {k: v for k, v in worker_env_base().items() if k != "DVP_DEPLOYER_KEY"} | {"DVP_DEPLOYER_KEY": key}
    out = subprocess.run([EXE, "deploy", "--rpc-url", "http://127.0.0.1:9", "--kind", "sc", "--token-name", "C",
                          "--token-symbol", "C"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "DVP_DEPLOYER_KEY" in _one_line_error(out, fragment) and (key[2:] or "x") not in out.stderr


def test_deploy_to_an_endpoint_that_does_not_answer_is_one_line(tmp_path):
    from tests.chain_kit import dev_accounts

    env = dict(worker_env_base()) | {"DVP_DEPLOYER_KEY": dev_accounts(1)[0].key.hex()}
    url = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([EXE, "deploy", "--rpc-url", url, "--kind", "sc", "--token-name", "C", "--token-symbol", "C"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert out.returncode == 1 and len(lines) == 1 and url in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_devnet_up_status_down_in_its_own_directory_stops_only_what_it_started(tmp_path, redis_server):
    import json

    d = tmp_path / "devnet"
    st_port, sc_port, st2_port = free_port(), free_port(), free_port()
    base = [EXE, "devnet", "--dir", str(d)]
    env = {k: v for k, v in worker_env_base().items() if not k.startswith("DVP_")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    up = cli("up", "--st-port", str(st_port), "--sc-port", str(sc_port), "--st2-port", str(st2_port), "--redis-url", redis_server.url.rsplit("/", 1)[0] + "/9",
             "--block-time", "0")
    try:
        assert up.returncode == 0, up.stderr[-1500:]
        assert (d / "deployment.json").exists() and (d / "devnet.env").stat().st_mode & 0o077 == 0
        st = json.loads(cli("status").stdout)
        assert st["up"] is True and st["st"]["block"] > 0 and st["sc"]["block"] > 0 and st["st2"]["block"] > 0
        ledgers = (d / "ledgers.toml").read_text()
        assert ledgers.count("[[ledgers]]") == 3 and f"DVP_CONFIG_FILE={(d / 'ledgers.toml').resolve()}" in (
            d / "devnet.env").read_text()
        assert "already up" in cli("up", "--st-port", str(st_port), "--sc-port", str(sc_port)).stdout
    finally:
        down = cli("down")
    assert down.returncode == 0 and "stopped anvil-st" in down.stdout and "redis" not in down.stdout
    deadline = time.monotonic() + 20
    while any(port_open(p) for p in (st_port, sc_port, st2_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(port_open(p) for p in (st_port, sc_port, st2_port))
    assert port_open(redis_server.port)  # the Redis it was given is left running
    assert json.loads(cli("status").stdout) == {"up": False}
