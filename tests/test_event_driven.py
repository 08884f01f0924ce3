"""Event-driven rounds on real chains: a round decides the trades whose view changed, not every open trade."""

from __future__ import annotations

import asyncio

from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive


async def test_idle_open_trades_cost_nothing_per_round_and_an_event_wakes_only_its_trade(net: Net):
    engine = await net.engine([net.seller])  # the buyer is absent: every trade waits with its ST locked
    decided: list[str] = []
    advance = engine.driver.advance

    async def counting(rec, rnd, fence=None):
        decided.append(rec.trade_id)
        return await advance(rec, rnd, fence=fence)

    engine.driver.advance = counting  # type: ignore[method-assign]
    try:
        signed = [await net.instruction(stAmount=1, scAmount=700 + i) for i in range(20)]
        ids = [s.instruction.tradeId for s in signed]
        for s in signed:
            await engine.intake(s)
        states = await drive(engine, ids, until={TradeState.ST_LOCKED}, timeout=60)
        assert set(states.values()) == {TradeState.ST_LOCKED}, states
        await asyncio.sleep(engine.settings.block_time * 3)  # let every lock's own events arrive and be decided
        for _ in range(3):
            await engine.step()
        engine.schedule._next_reconcile = float("inf")  # measure between reconciliations (every 5 s)
        decided.clear()
        for _ in range(30):  # blocks keep coming; nothing about these trades changes
            await engine.step()
            await asyncio.sleep(0.05)
        assert decided == [], f"{len(decided)} decisions for trades whose view did not change"
        engine.schedule.mark(ids[3])  # what an event of its swaps does (see Followers.take_changes)
        await engine.step()
        assert decided == [ids[3]]
        engine.schedule.mark_all()  # the reconciliation: everything once
        await engine.step()
        assert sorted(decided[1:]) == sorted(ids)
    finally:
        await close_engine(engine)
