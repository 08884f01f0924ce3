"""A bounded chaos run (`make test-slow`, which CI runs after `make test`): every fault and bot kind at least once
on the three-chain devnet (an ERC-3643 ST with issuer actions, a second ST platform on a permissioned profile, one
coin ledger, a Sentinel Redis group with failovers), real processes, the independent checker, and every accepted
trade looked up afterwards."""

from __future__ import annotations

import pytest

from chaos.runner import BOT_KINDS, CHAINS, FAULTS, ST_CHAINS, Chaos, ChaosConfig


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~4 minutes: it runs until every fault and bot kind came up once
async def test_bounded_chaos_run_has_no_one_sided_or_stuck_trade(tmp_path):
    lines: list[str] = []
    chaos = Chaos(ChaosConfig(trades=30, seed=7, concurrency=20, fault_interval=0.8, fault_rounds=1,
                              workdir=tmp_path / "chaos",
                              max_seconds=600), echo=lines.append)
    status = await chaos.run()
    report = "\n".join(lines)
    assert status == 0, report
    result = {o: list(chaos.outcomes.values()).count(o) for o in set(chaos.outcomes.values())}
    # ONE-SIDED only where the injected outages left less than Δ - margin seconds of service between the reveal and
    # the other leg's timelock (the documented HTLC limit, reported apart with its window); never otherwise
    assert result.get("ONE-SIDED", 0) == 0 and result.get("STUCK", 0) == 0, report
    assert len(chaos.outcomes) >= 30 and not chaos.lost
    # every fault kind was injected at least once, and honest trades settled despite them
    for kind in FAULTS + BOT_KINDS:
        assert chaos.stats.faults[kind] >= 1 or kind in ("duplicate", "replay_conflict"), (kind, report)
    honest = [t for t, k in chaos.kind_of.items() if k == "honest"]
    assert sum(chaos.outcomes[t] == "SETTLED" for t in honest) >= len(honest) // 2, report
    # trades went to both ST platforms and settled on each; faults hit each of the three chains
    for platform in ST_CHAINS:
        assert any(chaos.outcomes[t] == "SETTLED" for t, p in chaos.st_of.items() if p == platform), (platform, report)
    assert {chain for _, chain in chaos.target_counts} == set(CHAINS), (chaos.target_counts, report)
    assert not chaos.stats.checks_failed, report
    # every injected deep reorg left its evidence (the events it took out), none failed to be read
    assert not [k for k in chaos.stats.api_errors if k.startswith("evidence:")], report
