"""The chaos run's rule for a ONE-SIDED trade beyond the HTLC guarantee (chaos.timeline), on hand-made timelines."""

from chaos.timeline import ClockLog, Outage, claim_window, down_seconds


def test_down_seconds_counts_overlaps_once_and_only_the_kinds_asked_for():
    outages = [Outage("st chain", 10, 20), Outage("worker", 15, 25), Outage("sc chain", 0, 100),
               Outage("redis", 40, 41)]
    assert down_seconds(outages, 0, 50, {"st chain", "worker", "redis"}) == 16  # [10,25] + [40,41]
    assert down_seconds(outages, 12, 18, {"st chain", "worker"}) == 6  # clipped to the window
    assert down_seconds(outages, 30, 39, {"st chain", "worker", "redis"}) == 0


def test_chain_time_is_dated_with_the_offset_in_force_at_the_time():
    clocks = ClockLog()
    clocks.set("st", 1000.0, 3)
    assert clocks.to_wall("st", 990) == 990  # before the offset was set
    assert clocks.to_wall("st", 1013) == 1010
    assert clocks.to_wall("sc", 1013) == 1013


def test_a_short_outage_inside_the_window_is_no_excuse():
    # the secret went public on the SC chain at 100; T_st at 112 (Δ = 12); the ST chain was down 5 s
    w = claim_window("st", 100, "sc", 112, ClockLog(), [Outage("st chain", 101, 106)], budget=6)
    assert (w.down, w.up) == (5, 7)
    assert not w.beyond_guarantee  # 7 s of service >= Δ - margin: the relayer had to make it


def test_outages_that_leave_less_than_the_budget_are_beyond_the_guarantee():
    outages = [Outage("st chain", 101, 106), Outage("worker", 105, 109), Outage("sc chain", 100, 112)]
    w = claim_window("st", 100, "sc", 112, ClockLog(), outages, budget=6)
    assert w.down == 8  # the SC chain's outage does not stop an ST claim: not counted
    assert w.beyond_guarantee


def test_a_secret_hidden_by_a_chain_stopped_right_after_the_reveal_counts_from_its_restart():
    outages = [Outage("sc chain", 100.2, 110)]  # stopped 0.2 s after the reveal block, back 10 s later
    w = claim_window("st", 100, "sc", 112, ClockLog(), outages, budget=6, observe=0.5)
    assert w.start == 110 and w.beyond_guarantee
    w = claim_window("st", 100, "sc", 112, ClockLog(), [Outage("sc chain", 101, 110)], budget=6, observe=0.5)
    assert w.start == 100 and not w.beyond_guarantee  # the secret was readable for a second: no excuse


def test_a_reveal_made_while_the_relayer_was_down_counts_from_when_it_could_read_it():
    # the worker was down at the reveal and the coin ledger stopped before it was back: nobody could read it
    outages = [Outage("worker", 99, 101.5), Outage("sc chain", 100.8, 115)]
    w = claim_window("st", 100, "sc", 114, ClockLog(), outages, budget=6, observe=1.0)
    assert w.start == 115 and w.beyond_guarantee


def test_a_third_chain_has_its_own_clock_and_its_own_outages():
    clocks = ClockLog()
    clocks.set("st2", 50.0, 3)
    assert clocks.to_wall("st2", 103) == 100.0 and clocks.to_wall("st", 103) == 103.0
    # the buyer's ST claim on st2 is missing: an st2 outage counts against its window, an st outage does not
    w = claim_window("st2", 100, "sc", 115, clocks, [Outage("st chain", 100, 110), Outage("st2 chain", 104, 106)],
                     budget=6)
    assert (w.start, w.end, w.down) == (100.0, 112.0, 2.0) and not w.beyond_guarantee
