"""What ships for operators' monitoring and deployment, checked with the real tools: the Prometheus alert rules
(`promtool check rules`, and `promtool test rules` for the alerts that must never be missed: ONE_SIDED, a claim
racing its refund, a worker down), the Grafana dashboard (every query names a metric the worker exports) and the
systemd unit (`systemd-analyze verify`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.toolchain import REPO_ROOT
from relayer.metrics import REGISTRY

MONITORING = REPO_ROOT / "deploy" / "monitoring"
UNIT = REPO_ROOT / "deploy" / "systemd" / "dvp-relayer.service"
_METRIC = re.compile(r"\b(dvp_[a-z_]+)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make setup` installs it (Debian package)"
    return path


def _exported() -> set[str]:
    """Every sample name a worker's /metrics can carry (a Counter adds _total, a Histogram _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names |= {family.name + s for s in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                                             "gauge": ()}.get(family.type, ())}
    return names


def test_the_alert_rules_are_valid_and_their_unit_tests_pass():
    check = subprocess.run([_tool("promtool"), "check", "rules", "alerts.yml"], cwd=MONITORING,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run([_tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    for alert in ("DvpOneSided", "DvpClaimRacingItsRefund", "DvpWorkerDown"):  # each one has a unit test
        assert f"alertname: {alert}" in (MONITORING / "alerts_test.yml").read_text(), alert


@pytest.mark.parametrize("name", ["alerts.yml", "grafana-dashboard.json"])
def test_every_metric_the_rules_and_the_dashboard_query_is_one_the_worker_exports(name):
    text = (MONITORING / name).read_text()
    used = set(_METRIC.findall(text))
    assert len(used) >= 8, used
    assert used <= _exported(), f"not exported by relayer/metrics.py: {sorted(used - _exported())}"


def test_the_dashboard_is_grafana_json_with_a_query_per_panel():
    doc = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert doc["uid"] == "dvp-relayer" and doc["panels"]
    for panel in doc["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert any("ONE_SIDED" in t["expr"] for p in doc["panels"] for t in p["targets"])


def test_the_systemd_unit_verifies(tmp_path: Path):
    """systemd-analyze checks the keys and that ExecStart exists: the unit is verified with this checkout's
    dvp-relayer in place of /opt/dvp-relayer and the current user in place of dvp."""
    import getpass

    exe = Path(sys.executable).with_name("dvp-relayer")
    text = UNIT.read_text().replace("/opt/dvp-relayer/.venv/bin/dvp-relayer", str(exe))
    user = getpass.getuser()
    text = re.sub(r"^User=dvp$", f"User={user}", text, flags=re.M)
    text = re.sub(r"^Group=dvp$", f"Group={user}", text, flags=re.M)
    unit = tmp_path / "dvp-relayer.service"
    unit.write_text(text)
    out = subprocess.run([_tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "dvp-relayer.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=", "Restart=on-failure"):
        assert hardening in text
