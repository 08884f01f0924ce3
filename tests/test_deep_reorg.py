"""A reorg deeper than the confirmation depth (issue 18): beyond the protocol's guarantee, so it is detected from
the block hashes, alerted (log + metric, with its depth) and every trade is derived again from the new chain. The
relayer's own ST lock, taken out of the chain by it, is sent again (the same signed bytes) and followed again.""" 

from __future__ import annotations

import pytest

import time

from relayer import metrics
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive

pytestmark = pytest.mark.slow  # fault injection: `make test-slow` (CI runs it after `make test`)


async def test_a_reorg_deeper_than_k_that_removes_our_lock_is_alerted_and_the_lock_sent_again(net: Net):
    engine = await net.engine([net.seller])  # the seller's firm: the trade stays at its ST lock (no buyer here)
    try:
        before = metrics.DEEP_REORGS.labels("st")._value.get()
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == TradeState.ST_LOCKED
        lock_block = next(e["block"] for e in await engine.store.audit(tid) if e["event"] == "lock_st_mined")
        started = time.monotonic()
        await net.reorg(net.st, await net.st.block_number() - lock_block + 1)  # the lock's block on
        assert time.monotonic() - started < 10

        ledger = next(side.ledger for side in engine.sides if side.name == "st")
        swap = ledger.swap_id_of(net.seller.address, signed.instruction.trade_id_bytes)
        deadline = time.monotonic() + 30
        while await ledger.swap_slot(swap) == bytes(32):  # our lock, dropped with its block, is mined again
            assert time.monotonic() < deadline
            await drive(engine, [tid], until=set(), timeout=0.5)
        side = next(side for side in engine.sides if side.name == "st")
        deadline = time.monotonic() + 30
        while not side.index.instances(signed.instruction.trade_id_bytes):  # and followed again, k deep
            assert time.monotonic() < deadline
            await drive(engine, [tid], until=set(), timeout=0.5)
        assert (await engine.store.get(tid)).state == TradeState.ST_LOCKED
        assert metrics.DEEP_REORGS.labels("st")._value.get() == before + 1  # alerted once
    finally:
        await close_engine(engine)


async def test_a_refund_a_reorg_deeper_than_k_took_out_of_an_aborted_trade_is_made_again(net: Net):
    """Chaos seed 42: five trades on st2 were ABORTED on a refund batch 3 blocks deep (k=2) that a reorg of depth
    4 took out; finished and forgotten, their ST locks stayed live (STUCK). The locks of trades finished lately
    are read again after a deep reorg, and a live one of an aborted trade is refunded again."""
    engine = await net.engine([net.seller])  # the seller's firm alone: no buyer locks, the trade aborts
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == TradeState.ST_LOCKED
        await net.warp(3600)  # past T_st and the deadline
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.ABORTED
        refund_block = next(e["block"] for e in await engine.store.audit(tid) if e["event"] == "refund_st_mined")
        ledger = next(side.ledger for side in engine.sides if side.name == "st")
        swap = ledger.swap_id_of(net.seller.address, signed.instruction.trade_id_bytes)
        await net.st.rpc("anvil_mine", [3])  # the refund is k deep: final for the follower
        await drive(engine, [tid], until=set(), timeout=2)
        await net.reorg(net.st, await net.st.block_number() - refund_block + 1)  # takes it out
        assert await ledger.swap_slot(swap) != bytes(32)  # the lock is live again
        deadline = time.monotonic() + 30
        while await ledger.swap_slot(swap) != bytes(32):  # refunded again, by the janitor, as a stray
            assert time.monotonic() < deadline, [e["event"] for e in await engine.store.audit(tid)]
            await drive(engine, [tid], until=set(), timeout=0.5)
        assert (await engine.store.get(tid)).state == TradeState.ABORTED
    finally:
        await close_engine(engine)


async def test_a_claim_a_reorg_deeper_than_k_took_out_of_a_settled_trade_is_made_again(net: Net):
    """The settled trade's ST claim, k deep, is taken out by a deeper reorg: the buyer no longer holds the ST it
    paid for, and the lock would refund to the seller at T_st. The record is archived by then (no sealed secret
    left): the claim is made again with the preimage it had revealed, before T_st."""
    from relayer.store import trade_key

    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction()
        ins = signed.instruction
        tid = ins.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        claim_block = next(e["block"] for e in await engine.store.audit(tid) if e["event"] == "claim_st_mined")
        ledger = next(side.ledger for side in engine.sides if side.name == "st")
        swap = ledger.swap_id_of(ins.sellerStAccount, ins.trade_id_bytes)
        held = await net.balance(net.st, ins.stToken, ins.buyerStAccount)
        await net.st.rpc("anvil_mine", [3])  # the claim is k deep: final for the follower, and for its sender
        await drive(engine, [tid], until=set(), timeout=2)  # (which no longer re-sends it if a reorg takes it out)
        deadline = time.monotonic() + 30
        while not await engine.store.r.hexists(trade_key(tid), "archive"):  # archived: no sealed secret left
            assert time.monotonic() < deadline
            await drive(engine, [tid], until=set(), timeout=0.5)
        assert not await engine.store.r.hexists(trade_key(tid), "secret")
        await net.reorg(net.st, await net.st.block_number() - claim_block + 1)  # takes it out
        assert await ledger.swap_slot(swap) != bytes(32)  # the lock is live again
        assert await net.balance(net.st, ins.stToken, ins.buyerStAccount) == held - ins.stAmount
        deadline = time.monotonic() + 30
        while await ledger.swap_slot(swap) != bytes(32):  # claimed again, for the buyer
            assert time.monotonic() < deadline, [e["event"] for e in await engine.store.audit(tid)]
            await drive(engine, [tid], until=set(), timeout=0.5)
        assert await net.balance(net.st, ins.stToken, ins.buyerStAccount) == held
        events = [e["event"] for e in await engine.store.audit(tid)]
        assert events.count("claim_st_mined") == 2 and (await engine.store.get(tid)).state == TradeState.SETTLED
    finally:
        await close_engine(engine)
