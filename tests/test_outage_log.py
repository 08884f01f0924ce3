"""How the worker logs an outage that lasts: rounds fail ten times a second while Redis fails over, and the
log says so once, then every few seconds with a count, then once when it is over."""

from __future__ import annotations



def test_a_long_outage_writes_a_warning_every_few_seconds_not_one_per_failed_round():
    """Chaos: a Redis failover wrote `round_failed` ten times a second (770 lines in a few minutes)."""
    from structlog.testing import capture_logs

    from relayer.logging import OutageLog, get_logger

    with capture_logs() as logs:
        outage = OutageLog(get_logger(), "round_failed", every=10.0)
        for i in range(200):  # 20 s of rounds failing every 0.1 s
            outage.failed_now(ConnectionError("refused"), now=100.0 + i * 0.1)
        outage.failed_now(TimeoutError("slow"), now=119.95)  # another kind of failure: said at once, before 10 s
        outage.ok_now(now=121.0)
        outage.failed_now(ConnectionError("refused"), now=130.0)  # a new outage: said at once
    events = [(e["event"], e.get("failed", e.get("failed_since_last_line")), e.get("failing_for_s")) for e in logs]
    assert events == [("round_failed", 1, 0.0), ("round_failed", 100, 10.0), ("round_failed", 100, 20.0),
                      ("round_failed_recovered", 0, 21.0), ("round_failed", 1, 0.0)], events
