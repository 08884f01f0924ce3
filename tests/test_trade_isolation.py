"""Errors are isolated per trade: a record that cannot be read, or a trade whose decision raises, is set aside
(logged, counted, audited, retried after a pause) while every other trade settles, its ST claim after the
reveal included. Real chains, real Redis, a real engine."""

from __future__ import annotations

from relayer import metrics
from relayer.protocol.states import TradeState
from relayer.store import trade_key
from tests.relayer_kit import Net, close_engine, drive


def _errors(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("dvp_trade_errors_total", {"kind": kind}) or 0.0


async def test_corrupted_records_among_live_trades_are_set_aside_and_the_others_settle(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = [await net.instruction(stAmount=1, scAmount=500 + i) for i in range(4)]
        unreadable, undecidable, *good = [s.instruction.tradeId for s in signed]
        for s in signed:
            assert await engine.intake(s) is True
        before = _errors("CorruptRecord"), _errors("ValueError")
        # one record no longer parses (a state no version ever wrote); one parses but its hashlock is not hex,
        # so deciding it raises inside the driver
        await engine.store.r.hset(trade_key(unreadable), "state", "HALF_DONE")
        await engine.store.r.hset(trade_key(undecidable), mapping={"hashlock": "not-hex", "t_st": "1"})
        states = await drive(engine, good, timeout=90)
        assert set(states.values()) == {TradeState.SETTLED}, states
        for tid in good:  # the whole protocol ran for them, the reveal and the ST claim after it included
            events = [e["event"] for e in await engine.store.audit(tid)]
            assert events.index("claim_sc_mined") < events.index("claim_st_mined"), events
        assert _errors("CorruptRecord") > before[0] and _errors("ValueError") > before[1]
        assert len(engine.quarantine) == 2
        assert "quarantined" in [e["event"] for e in await engine.store.audit(undecidable)]
        # nothing was ever sent for the set-aside trades
        for tid in (unreadable, undecidable):
            assert not [e for e in await engine.store.audit(tid) if str(e["event"]).endswith("_sent")]

        # repaired, the trade is picked up again after its pause and settles
        await engine.store.r.hdel(trade_key(undecidable), "hashlock", "t_st")
        states = await drive(engine, [undecidable], timeout=90)
        assert states[undecidable] is TradeState.SETTLED
        assert len(engine.quarantine) == 1
    finally:
        await close_engine(engine)
