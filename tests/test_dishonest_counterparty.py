"""A counterparty that attacks the protocol with raw web3 on real chains (issue 13): it locks the right terms too late
while filling the coin ledger's blocks, re-locks a trade id, or locks the ST with too little time left."""

from __future__ import annotations

import pytest

import asyncio
import hashlib
import os

from adapters.contracts import encode_call, swap_id
from adapters.evm import TxSender
from deploy.deployer import deploy
from deploy.devnet import dev_account
from relayer.protocol.states import TradeState
from chaos.congestion import GWEI, BlockFiller, SecretWatch
from tests.relayer_kit import Net, close_engine, drive
from tests.test_failure_paths import _bot_lock

E = "HashedTimelockEscrow"
FILLER_TIP = 50 * GWEI


async def _congest(net: Net, stop: asyncio.Event) -> tuple[BlockFiller, asyncio.Task]:
    burner = await deploy(TxSender(net.sc, dev_account(8)), "GasBurner")
    filler = BlockFiller(net.sc, burner, [dev_account(6), dev_account(7)], tip_wei=FILLER_TIP)
    task = asyncio.create_task(filler.run(stop))
    # the attack is real: a transaction tipping the relayer's usual 1 gwei does not get in while the filler runs
    probe_acct = dev_account(9)
    probe = await TxSender(net.sc, probe_acct).send(probe_acct.address, b"", gas=21_000)
    await asyncio.sleep(3)
    assert await net.sc.receipt(probe.tx_hash) is None, "the filler did not congest the coin ledger"
    return filler, task


async def _sc_lock_by_buyer(net: Net, ins, amount: int, hashlock: bytes, timelock: int, tip: int = 100 * GWEI) -> None:
    """The buyer's own lock, tipping above the filler so that it does get in."""
    await TxSender(net.sc, net.buyer, priority_fee_wei=tip).transact(net.doc["sc"]["escrow"], encode_call(
        E, "lockTokens", ins.trade_id_bytes, ins.scToken, amount, ins.sellerScAccount, hashlock, timelock))


async def _seller_plan(engine, tid: str) -> tuple[bytes, int]:
    rec = await engine.store.get(tid)
    return engine.box.open(rec.fields["secret"], tid), int(rec.fields["t_st"])


@pytest.mark.slow  # an attack with congestion (16 s): `make test-slow`; the reveal rule itself is in test_reveal_rule
async def test_a_right_lock_made_too_late_is_never_claimed_and_the_secret_never_leaves_even_under_congestion(net: Net):
    """The attack: the buyer locks the right terms 6 s before T_sc and fills the coin ledger's blocks. A seller that
    claimed then would sit in the mempool past T_sc with its secret public: the buyer takes the ST and refunds."""
    engine = await net.engine([net.seller])  # we act for the seller only
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        signed = await net.instruction()
        ins, tid = signed.instruction, signed.instruction.tradeId
        st_before = await net.balance(net.st, net.st_token, net.seller.address)
        sc_before = await net.balance(net.sc, net.sc_token, net.buyer.address)
        await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        secret, t_st = await _seller_plan(engine, tid)
        t_sc = t_st - engine.routes.route(ins).policy.delta()
        watch = SecretWatch([net.st, net.sc], secret)
        await watch.start()
        _, filling = await _congest(net, stop)
        tasks += [filling, asyncio.create_task(watch.run(stop))]
        await net.warp(t_sc - 6 - await net.sc.now())
        await _sc_lock_by_buyer(net, ins, ins.scAmount, hashlib.sha256(secret).digest(), t_sc)
        await drive(engine, [tid], until=set(), timeout=9)  # T_sc passes meanwhile
        assert await net.sc.now() >= t_sc
        events = await engine.store.audit(tid)
        assert not [e for e in events if e["event"].startswith("claim_sc")], events
        assert any(e["event"] == "not_acting" and "too late to reveal" in e["reason"] for e in events)
        stop.set()
        await asyncio.gather(*tasks)
        await watch.check()
        assert watch.seen_in == []  # the secret never reached a transaction, a block or the mempool
        await net.warp(t_st - await net.st.now() + 2)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.ABORTED
        assert await net.balance(net.st, net.st_token, net.seller.address) == st_before
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == sc_before  # refunded by us, a watcher
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_engine(engine)


async def test_a_timely_reveal_outbids_the_congestion_and_settles(net: Net):
    """With Δ left, the seller's claim tips above what fills the blocks (eth_feeHistory), so it gets in."""
    engine = await net.engine([net.seller])
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        signed = await net.instruction()
        ins, tid = signed.instruction, signed.instruction.tradeId
        await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        secret, t_st = await _seller_plan(engine, tid)
        _, filling = await _congest(net, stop)
        tasks.append(filling)
        await _sc_lock_by_buyer(net, ins, ins.scAmount, hashlib.sha256(secret).digest(), t_st - engine.routes.route(ins).policy.delta())
        assert (await drive(engine, [tid], timeout=30))[tid] == TradeState.SETTLED
        claim = next(e for e in await engine.store.audit(tid) if e["event"] == "claim_sc_sent")
        tx = await net.sc.call(lambda w3: w3.eth.get_transaction(claim["tx"]))
        assert tx["maxPriorityFeePerGas"] > FILLER_TIP
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_engine(engine)


async def test_a_re_lock_after_a_wrong_terms_lock_was_refunded_is_followed_not_left_stuck(net: Net):
    """The buyer locks wrong terms, that lock is refunded, then it locks the right terms under the same trade id.
    The engine used to pair the refund with the second lock (same swap id): ABORTED, second lock stuck in escrow."""
    engine = await net.engine([net.seller])
    try:
        signed = await net.instruction()
        ins, tid = signed.instruction, signed.instruction.tradeId
        seller_sc = await net.balance(net.sc, net.sc_token, net.seller.address)
        await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        secret, t_st = await _seller_plan(engine, tid)
        hashlock, sid = hashlib.sha256(secret).digest(), swap_id(net.buyer.address, ins.trade_id_bytes)
        await _bot_lock(net, net.sc, net.buyer, net.doc["sc"]["escrow"], ins.trade_id_bytes, ins.scToken,
                        ins.scAmount - 1, ins.sellerScAccount, hashlock, await net.sc.now() + 6)
        await drive(engine, [tid], until=set(), timeout=2)
        await net.warp(8)
        for _ in range(100):  # the wrong lock is refunded by us, as a watcher
            await engine.step()
            await engine.drain(timeout=2)
            if await engine.sc.ledger.swap_slot(sid) == bytes(32):
                break
        assert await engine.sc.ledger.swap_slot(sid) == bytes(32)
        await _bot_lock(net, net.sc, net.buyer, net.doc["sc"]["escrow"], ins.trade_id_bytes, ins.scToken,
                        ins.scAmount, ins.sellerScAccount, hashlock, t_st - engine.routes.route(ins).policy.delta())
        assert (await drive(engine, [tid], timeout=40))[tid] == TradeState.SETTLED
        assert await net.balance(net.sc, net.sc_token, net.seller.address) == seller_sc + ins.scAmount
        assert await engine.sc.ledger.swap_slot(sid) == bytes(32)
    finally:
        await close_engine(engine)


async def test_a_settled_trade_id_locked_again_is_never_claimed_and_is_refunded(net: Net):
    """Both legs' senders lock again under a settled trade id, with the hashlock whose secret is public now. The
    relayer, which knows the secret, must not claim them (nobody agreed to a second trade): it refunds them."""
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction()
        ins, tid = signed.instruction, signed.instruction.tradeId
        await engine.intake(signed)
        await drive(engine, [tid], until={TradeState.ST_LOCKED, TradeState.SC_LOCKED, TradeState.SETTLED})
        secret, _ = await _seller_plan(engine, tid)  # read before archival drops it (it is public once settled)
        assert (await drive(engine, [tid]))[tid] == TradeState.SETTLED
        hashlock = hashlib.sha256(secret).digest()
        before = {"st": await net.balance(net.st, net.st_token, net.seller.address),
                  "sc": await net.balance(net.sc, net.sc_token, net.buyer.address)}
        await _bot_lock(net, net.st, net.seller, net.doc["st"]["escrow"], ins.trade_id_bytes, ins.stToken,
                        ins.stAmount, ins.buyerStAccount, hashlock, await net.st.now() + 8)
        await _bot_lock(net, net.sc, net.buyer, net.doc["sc"]["escrow"], ins.trade_id_bytes, ins.scToken,
                        ins.scAmount, ins.sellerScAccount, hashlock, await net.sc.now() + 8)
        await drive(engine, [tid], until=set(), timeout=4)
        await engine.drain()
        events = [e["event"] for e in await engine.store.audit(tid)]
        assert events.count("claim_st_sent") == 1 and events.count("claim_sc_sent") == 1, events  # the trade's own
        await net.warp(10)
        slots = [(engine.st.ledger, swap_id(net.seller.address, ins.trade_id_bytes)),
                 (engine.sc.ledger, swap_id(net.buyer.address, ins.trade_id_bytes))]
        for _ in range(100):
            await engine.step()
            await engine.drain(timeout=2)
            if all([await ledger.swap_slot(sid) == bytes(32) for ledger, sid in slots]):
                break
        assert await net.balance(net.st, net.st_token, net.seller.address) == before["st"]
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == before["sc"]
        events = [e["event"] for e in await engine.store.audit(tid)]
        assert events.count("claim_st_sent") == 1 and events.count("claim_sc_sent") == 1, events
        assert "refund_st_mined" in events and "refund_sc_mined" in events
    finally:
        await close_engine(engine)


async def test_the_buyer_does_not_lock_with_less_than_3_delta_left_on_t_st(net: Net):
    engine = await net.engine([net.buyer])  # we act for the buyer; the seller is a bot
    try:
        signed = await net.instruction()
        ins, tid = signed.instruction, signed.instruction.tradeId
        delta = engine.routes.route(ins).policy.delta()
        await engine.intake(signed)
        t_st = await net.st.now() + 3 * delta - 4  # between 2Δ and 3Δ once seen
        await _bot_lock(net, net.st, net.seller, net.doc["st"]["escrow"], ins.trade_id_bytes, ins.stToken,
                        ins.stAmount, ins.buyerStAccount, hashlib.sha256(os.urandom(32)).digest(), t_st)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        await drive(engine, [tid], until=set(), timeout=3)
        events = await engine.store.audit(tid)
        assert not [e for e in events if e["event"].startswith("lock_sc")], events
        assert any(e["event"] == "not_acting" and "3Δ" in e["reason"] for e in events)
        await net.warp(t_st - await net.st.now() + 2)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.ABORTED
    finally:
        await close_engine(engine)
