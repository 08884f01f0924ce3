"""Failure paths of the protocol on real chains: absent or dishonest counterparties end ABORTED, never one-sided."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from adapters.contracts import encode_call, swap_id
from relayer.engine import Engine
from relayer.protocol.instruction import TradeInstruction
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive

E = "HashedTimelockEscrow"


async def _bot_lock(net: Net, chain, acct, escrow: str, trade_id: bytes, token: str, amount: int, receiver: str,
                    hashlock: bytes, timelock: int) -> None:
    await net.sender(chain, acct).transact(escrow, encode_call(E, "lockTokens", trade_id, token, amount, receiver, hashlock,
                                                               timelock))


async def _bot_reveals_after_sc_lock(net: Net, engine: Engine) -> tuple[TradeInstruction, bytes]:
    """A bot seller locks the ST; `engine` (buyer side) locks the SC; the bot claims the SC (the reveal)."""
    signed = await net.instruction()
    ins = signed.instruction
    secret = os.urandom(32)
    await engine.intake(signed)
    await _bot_lock(net, net.st, net.seller, net.doc["st"]["escrow"], ins.trade_id_bytes, ins.stToken,
                    ins.stAmount, ins.buyerStAccount, hashlib.sha256(secret).digest(), await net.st.now() + 120)
    assert (await drive(engine, [ins.tradeId], until={TradeState.SC_LOCKED}))[ins.tradeId] == TradeState.SC_LOCKED
    t_sc = (await engine.store.get(ins.tradeId)).get_int("sc_timelock")
    await net.sender(net.sc, net.seller).transact(net.doc["sc"]["escrow"], encode_call(
        E, "claimTokens", secret, swap_id(net.buyer.address, ins.trade_id_bytes), ins.scToken, ins.scAmount,
        ins.sellerScAccount, t_sc))
    return ins, secret


async def test_buyer_never_locks_st_is_refunded_and_trade_aborted(net: Net):
    engine = await net.engine([net.seller])  # acts for the seller only; the buyer is absent
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        before = await net.balance(net.st, net.st_token, net.seller.address)
        await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        assert await net.balance(net.st, net.st_token, net.seller.address) == before - 10
        await net.warp(engine.settings.st_lock_duration + 5)
        assert (await drive(engine, [tid]))[tid] == TradeState.ABORTED
        assert await net.balance(net.st, net.st_token, net.seller.address) == before
        assert "refund_st_mined" in [e["event"] for e in await engine.store.audit(tid)]
    finally:
        await close_engine(engine)


async def test_seller_never_claims_both_legs_are_refunded(net: Net):
    engine = await net.engine([net.buyer])  # acts for the buyer only; a seller bot locks and walks away
    try:
        signed = await net.instruction()
        ins = signed.instruction
        secret = os.urandom(32)
        t_st = await net.st.now() + 120
        sc_before = await net.balance(net.sc, net.sc_token, net.buyer.address)
        await engine.intake(signed)
        await _bot_lock(net, net.st, net.seller, net.doc["st"]["escrow"], ins.trade_id_bytes, ins.stToken,
                        ins.stAmount, ins.buyerStAccount, hashlib.sha256(secret).digest(), t_st)
        assert (await drive(engine, [ins.tradeId], until={TradeState.SC_LOCKED}))[ins.tradeId] == TradeState.SC_LOCKED
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == sc_before - ins.scAmount
        await net.warp(125)
        assert (await drive(engine, [ins.tradeId]))[ins.tradeId] == TradeState.ABORTED
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == sc_before
        events = [e["event"] for e in await engine.store.audit(ins.tradeId)]
        assert "refund_sc_mined" in events and "refund_st_mined" in events  # the ST refunded by us as a watcher
    finally:
        await close_engine(engine)


@pytest.mark.parametrize("wrong", ["amount", "receiver", "hashlock", "timelock"])
async def test_counterparty_sc_lock_with_wrong_terms_is_never_acted_on(net: Net, wrong: str):
    engine = await net.engine([net.seller])  # we act for the seller; a dishonest buyer bot locks wrong terms
    try:
        signed = await net.instruction()
        ins = signed.instruction
        st_before = await net.balance(net.st, net.st_token, net.seller.address)
        sc_seller_before = await net.balance(net.sc, net.sc_token, net.seller.address)
        await engine.intake(signed)
        assert (await drive(engine, [ins.tradeId], until={TradeState.ST_LOCKED}))[ins.tradeId] == TradeState.ST_LOCKED
        rec = await engine.store.get(ins.tradeId)
        hashlock, t_st = bytes.fromhex(rec.fields["hashlock"]), int(rec.fields["t_st"])
        terms = dict(amount=ins.scAmount, receiver=ins.sellerScAccount, hashlock=hashlock,
                     timelock=t_st - engine.routes.route(ins).policy.delta())
        terms[wrong] = {"amount": ins.scAmount - 1, "receiver": net.pts.address, "hashlock": os.urandom(32),
                        "timelock": t_st - 1}[wrong]
        if wrong == "receiver":
            await net.sender(net.sc, dev_issuer()).transact(
                net.sc_token, encode_call("Stablecoin", "setAllowed", [net.pts.address], True))
        await _bot_lock(net, net.sc, net.buyer, net.doc["sc"]["escrow"], ins.trade_id_bytes, ins.scToken,
                        terms["amount"], terms["receiver"], terms["hashlock"], terms["timelock"])
        # several rounds with the bad lock visible: no claim is ever sent, the secret stays private
        await drive(engine, [ins.tradeId], until=set(), timeout=3)
        events = await engine.store.audit(ins.tradeId)
        assert not [e for e in events if e["event"].startswith("claim")]
        assert any(e["event"] == "not_acting" and "SC lock" in e["reason"] for e in events)
        await net.warp(engine.settings.st_lock_duration + 5)
        assert (await drive(engine, [ins.tradeId]))[ins.tradeId] == TradeState.ABORTED
        assert await net.balance(net.st, net.st_token, net.seller.address) == st_before
        assert await net.balance(net.sc, net.sc_token, net.seller.address) == sc_seller_before
        # the bad SC lock was refunded to the buyer too (by us, as a watcher)
        sid = swap_id(net.buyer.address, ins.trade_id_bytes)
        assert await engine.sc.ledger.swap_slot(sid) == bytes(32)
    finally:
        await close_engine(engine)


def dev_issuer():
    from deploy.devnet import ROLES, dev_account

    return dev_account(ROLES["issuer"])


async def test_a_counterparty_lock_made_after_the_trade_was_aborted_is_refunded_not_left_stuck(net: Net):
    """Found by the long chaos run: a buyer whose SC lock was mined only after the trade had been ABORTED left its
    coins locked for good (the checker's STUCK). The relayer refunds such a late lock as a watcher."""
    engine = await net.engine([net.seller])
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}))[tid] == TradeState.ST_LOCKED
        await net.warp(engine.settings.st_lock_duration + 5)
        assert (await drive(engine, [tid]))[tid] == TradeState.ABORTED
        before = await net.balance(net.sc, net.sc_token, net.buyer.address)
        now = await net.sc.now()
        await _bot_lock(net, net.sc, net.buyer, net.doc["sc"]["escrow"], signed.instruction.trade_id_bytes,
                        net.sc_token, 777, net.seller.address, os.urandom(32), now + 5)
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == before - 777
        await net.warp(10)
        sid = swap_id(net.buyer.address, signed.instruction.trade_id_bytes)
        for _ in range(200):
            await engine.step()
            await engine.drain(timeout=2)
            if await engine.sc.ledger.swap_slot(sid) == bytes(32):
                break
        assert await engine.sc.ledger.swap_slot(sid) == bytes(32)
        assert await net.balance(net.sc, net.sc_token, net.buyer.address) == before  # the buyer got it back
        assert "refund_sc_mined" in [e["event"] for e in await engine.store.audit(tid)]
    finally:
        await close_engine(engine)


async def test_the_buyer_claims_the_st_with_a_secret_seen_before_its_reveal_is_k_blocks_deep(net: Net):
    """A counterparty that reveals at the last moment leaves the buyer Δ; waiting k blocks to read the secret
    spends part of it. The secret is valid whatever happens to the block, so the ST claim goes out at once."""
    engine = await net.engine([net.buyer], confirmations=6)  # 3 s of blocks before a claim counts as confirmed
    try:
        ins, _ = await _bot_reveals_after_sc_lock(net, engine)
        assert (await drive(engine, [ins.tradeId]))[ins.tradeId] == TradeState.SETTLED
        events = [e["event"] if e["event"] != "state" else f"state:{e['to']}" for e in await engine.store.audit(ins.tradeId)]
        sent = events.index("claim_st_sent")
        later_states = [e for e in events if e in ("state:SC_CLAIMED", "state:SETTLED")]
        assert later_states and all(events.index(e) > sent for e in later_states), events
    finally:
        await close_engine(engine)


async def test_the_counterparty_secret_is_kept_sealed_as_soon_as_it_is_seen(net: Net):
    engine = await net.engine([net.buyer])
    try:
        ins, secret = await _bot_reveals_after_sc_lock(net, engine)
        for _ in range(200):
            await engine.step()
            rec = await engine.store.get(ins.tradeId)
            if rec.get("secret"):
                break
            await asyncio.sleep(0.05)
        assert engine.box.open(rec.fields["secret"], ins.tradeId) == secret
        assert secret.hex() not in str(rec.fields)
        assert (await drive(engine, [ins.tradeId]))[ins.tradeId] == TradeState.SETTLED
        events = [e["event"] for e in await engine.store.audit(ins.tradeId)]
        assert events.index("secret_learned") < events.index("claim_st_sent"), events  # kept before it is used
    finally:
        await close_engine(engine)


@pytest.mark.parametrize("coin_ledger", ["refusing", pytest.param("hanging", marks=pytest.mark.slow)])
async def test_a_worker_restarted_while_the_coin_ledger_is_down_claims_the_st_from_the_kept_secret(net: Net,
                                                                                                  coin_ledger: str):
    """A worker that restarts while the revealing chain is down (or still being replayed) cannot read the secret
    from it; it claims the ST from the sealed copy the previous worker kept, within Δ, instead of waiting. A node
    that hangs (no answer until the request timeout, as an anvil writing its state on shutdown) must not hold up
    the ST side either: a round decides without a chain that has not answered within FOLLOW_BUDGET."""
    from deploy.processes import free_port

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0) if coin_ledger == "hanging" else None
    port = hung.sockets[0].getsockname()[1] if hung else free_port()
    engine = await net.engine([net.buyer])
    try:
        ins, secret = await _bot_reveals_after_sc_lock(net, engine)
        # what the first worker writes on seeing the reveal, just before it dies (its claim never sent)
        rec = await engine.store.get(ins.tradeId)
        await engine.store.update(rec, {"state": TradeState.SC_CLAIMED.value,
                                        "secret": engine.box.seal(secret, ins.tradeId)}, actor="test", event=None)
        redis_url = engine.settings.redis_url
    finally:
        await close_engine(engine)
    st_swap = swap_id(net.seller.address, ins.trade_id_bytes)
    before = await net.balance(net.st, net.st_token, net.buyer.address)
    restarted = await net.engine([net.buyer], redis_url=redis_url, sc_rpc_url=f"http://127.0.0.1:{port}",
                                 rpc_timeout=5.0)
    try:
        assert await restarted.st.ledger.swap_slot(st_swap) != bytes(32)  # still locked: the claim is due
        started = time.monotonic()
        while time.monotonic() - started < 30:
            await restarted.step()
            await asyncio.sleep(0.05)
            if await restarted.st.ledger.swap_slot(st_swap) == bytes(32):
                break
        claimed_after = time.monotonic() - started
        assert not restarted.sc.fresh  # it never read the coin ledger
        assert await net.balance(net.st, net.st_token, net.buyer.address) == before + ins.stAmount
        # a hanging node costs one follow budget, not 3 attempts x 5 s of request timeout per call
        assert claimed_after < 8, claimed_after
    finally:
        for side in (restarted.st, restarted.sc):
            if side.following is not None:
                side.following.cancel()
        await close_engine(restarted)
        if hung:
            hung.close()


async def test_a_seller_lock_held_up_past_its_window_is_replanned_not_aborted(net: Net):
    """A seller-side plan (secret, T_st) whose ST lock never went out while T_st left room (the ST chain or the
    worker was down for long) gets a new T_st before the deadline, and the trade still settles."""
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction()
        ins = signed.instruction
        await engine.intake(signed)
        secret = os.urandom(32)
        stale_t_st = await net.st.now() + 10  # what an earlier incarnation planned before the outage
        rec = await engine.store.get(ins.tradeId)
        await engine.store.update(rec, {"hashlock": hashlib.sha256(secret).hexdigest(), "t_st": stale_t_st,
                                        "secret": engine.box.seal(secret, ins.tradeId)}, actor="test", event=None)
        assert (await drive(engine, [ins.tradeId]))[ins.tradeId] == TradeState.SETTLED
        events = await engine.store.audit(ins.tradeId)
        replanned = [e for e in events if e["event"] == "lock_replanned"]
        assert len(replanned) == 1 and replanned[0]["was"] == stale_t_st
        assert replanned[0]["t_st"] - stale_t_st >= engine.routes.route(ins).policy.min_st_window() - 10
    finally:
        await close_engine(engine)
