"""Two firms, each with its own relayer, keys and Redis, sharing only the chains and the PTS instruction."""

from __future__ import annotations

from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive, drive_together


async def test_seller_firm_and_buyer_firm_settle_together(net: Net):
    seller_firm = await net.engine([net.seller])  # own Redis database, own keys
    buyer_firm = await net.engine([net.buyer])
    try:
        signed = await net.instruction(stAmount=6, scAmount=6_000)
        tid = signed.instruction.tradeId
        assert await seller_firm.intake(signed) and await buyer_firm.intake(signed)
        before = await net.balance(net.st, net.st_token, net.buyer.address)
        assert await drive_together([seller_firm, buyer_firm], tid) == {TradeState.SETTLED}
        await seller_firm.drain()
        await buyer_firm.drain()
        assert await net.balance(net.st, net.st_token, net.buyer.address) == before + 6
        # only the seller's firm ever held the secret
        assert (await buyer_firm.store.get(tid)).get("hashlock") is None
    finally:
        await close_engine(seller_firm)
        await close_engine(buyer_firm)


async def test_buyer_firm_down_after_its_lock_the_seller_firm_still_settles_both_legs(net: Net):
    seller_firm = await net.engine([net.seller])
    buyer_firm = await net.engine([net.buyer])
    try:
        signed = await net.instruction(stAmount=2, scAmount=2_000)
        tid = signed.instruction.tradeId
        await seller_firm.intake(signed)
        await buyer_firm.intake(signed)
        for _ in range(400):
            await seller_firm.step()
            await buyer_firm.step()
            if (await buyer_firm.store.get(tid)).state == TradeState.SC_LOCKED:
                break
        await buyer_firm.drain()
        await close_engine(buyer_firm)  # the buyer's firm goes down for good
        buyer_firm = None
        before = await net.balance(net.st, net.st_token, net.buyer.address)
        # the seller's firm claims the SC and, in the same moment, the ST for the buyer
        assert (await drive(seller_firm, [tid]))[tid] == TradeState.SETTLED
        assert await net.balance(net.st, net.st_token, net.buyer.address) == before + 2
    finally:
        await close_engine(seller_firm)
        if buyer_firm is not None:
            await close_engine(buyer_firm)


async def test_seller_firm_down_after_both_locks_the_buyer_firm_recovers_its_coins(net: Net):
    seller_firm = await net.engine([net.seller])
    buyer_firm = await net.engine([net.buyer])
    try:
        signed = await net.instruction(stAmount=3, scAmount=3_000)
        tid = signed.instruction.tradeId
        await seller_firm.intake(signed)
        await buyer_firm.intake(signed)
        sc_before = await net.balance(net.sc, net.sc_token, net.buyer.address)
        for _ in range(400):
            await seller_firm.step()
            if (await seller_firm.store.get(tid)).state == TradeState.ST_LOCKED:
                break
        await seller_firm.drain()
        await close_engine(seller_firm)  # the seller's firm goes down before it can claim
        seller_firm = None
        assert (await drive(buyer_firm, [tid], until={TradeState.SC_LOCKED}))[tid] == TradeState.SC_LOCKED
        await net.warp(125)  # past T_sc and T_st
        assert (await drive(buyer_firm, [tid]))[tid] == TradeState.ABORTED
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == sc_before  # coins back
        events = [e["event"] for e in await buyer_firm.store.audit(tid)]
        assert "refund_sc_mined" in events and "refund_st_mined" in events  # and the seller's ST too
    finally:
        if seller_firm is not None:
            await close_engine(seller_firm)
        await close_engine(buyer_firm)
