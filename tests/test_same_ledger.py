"""Same-ledger fast path: ST and SC on one chain settle in ONE AtomicDvP transaction, picked by the relayer."""

from __future__ import annotations

import asyncio

import pytest

from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive


async def _balances(net: Net) -> tuple[int, int, int, int]:
    return (await net.balance(net.st, net.st_token, net.seller.address),
            await net.balance(net.st, net.st_token, net.buyer.address),
            await net.balance(net.st, net.sc_token, net.seller.address),
            await net.balance(net.st, net.sc_token, net.buyer.address))


async def test_a_same_ledger_trade_settles_in_one_transaction_without_a_secret(one_chain: Net):
    net = one_chain
    engine = await net.engine([net.seller, net.buyer], dvp_contract=net.doc["st"]["dvp"])
    try:
        signed = await net.instruction(stAmount=3, scAmount=3_000)
        tid = signed.instruction.tradeId
        before = await _balances(net)
        assert await engine.intake(signed)
        assert (await drive(engine, [tid]))[tid] == TradeState.SETTLED
        assert await _balances(net) == (before[0] - 3, before[1] + 3, before[2] + 3_000, before[3] - 3_000)
        events = await engine.store.audit(tid)
        names = [e["event"] for e in events]
        assert names.count("settle_dvp_mined") == 1
        assert not any(n.startswith(("lock_", "claim_", "refund_")) or n == "secret_created" for n in names)
        mined = next(e for e in events if e["event"] == "settle_dvp_mined")
        # one transaction for both legs, cheaper than the HTLC path's two locks + two claims (~219k)
        assert 0 < mined["gas"] < 150_000
        rec = await engine.store.get(tid)
        assert rec is not None and rec.get("secret") is None and rec.get("hashlock") is None
    finally:
        await close_engine(engine)


async def test_an_operator_cannot_cancel_a_same_ledger_trade(one_chain: Net):
    """Found by a review of the operator actions: a cancel read the HTLC escrow's slots, which say nothing of a
    same-ledger trade; the AtomicDvP settlement then moved both legs of a trade recorded as cancelled."""
    from relayer.errors import NotCancellable
    from relayer.operator import cli_actor

    net = one_chain
    engine = await net.engine([net.seller, net.buyer], dvp_contract=net.doc["st"]["dvp"])
    try:
        signed = await net.instruction(stAmount=2, scAmount=2_000)
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        with pytest.raises(NotCancellable, match="AtomicDvP"):
            await engine.read_model.cancel(tid, cli_actor(), "test")
        assert (await drive(engine, [tid]))[tid] == TradeState.SETTLED
    finally:
        await close_engine(engine)


async def test_concurrent_same_ledger_trades_go_out_as_one_batch(one_chain: Net):
    net = one_chain
    engine = await net.engine([net.seller, net.buyer], dvp_contract=net.doc["st"]["dvp"])
    try:
        signed = [await net.instruction(stAmount=1, scAmount=10 + i) for i in range(12)]
        ids = [s.instruction.tradeId for s in signed]
        before = await _balances(net)
        await asyncio.gather(*(engine.intake(s) for s in signed))
        states = await drive(engine, ids, timeout=60)
        assert set(states.values()) == {TradeState.SETTLED}, states
        after = await _balances(net)
        assert after[1] == before[1] + 12 and after[2] == before[2] + sum(10 + i for i in range(12))
        sent = [e for tid in ids for e in await engine.store.audit(tid) if e["event"] == "settle_dvp_sent"]
        assert any(e.get("batch", 1) > 1 for e in sent)
    finally:
        await close_engine(engine)


async def test_without_both_parties_keys_nothing_moves_and_the_trade_aborts_at_its_deadline(one_chain: Net):
    net = one_chain
    engine = await net.engine([net.seller], dvp_contract=net.doc["st"]["dvp"])  # the seller's firm only
    try:
        signed = await net.instruction(stAmount=2, scAmount=2_000)
        tid = signed.instruction.tradeId
        before = await _balances(net)
        assert await engine.intake(signed)
        states = await drive(engine, [tid], timeout=3)
        assert states[tid] == TradeState.MATCHED
        assert any(e["event"] == "not_acting" for e in await engine.store.audit(tid))
        await net.st.rpc("evm_increaseTime", [400])  # past the deadline
        await net.st.rpc("evm_mine", [])
        assert (await drive(engine, [tid], timeout=20))[tid] == TradeState.ABORTED
        assert await _balances(net) == before
    finally:
        await close_engine(engine)


async def test_the_htlc_path_is_kept_when_no_atomic_contract_is_configured(one_chain: Net):
    net = one_chain
    engine = await net.engine([net.seller, net.buyer])  # both legs on one chain, but no DVP_DVP_CONTRACT
    try:
        signed = await net.instruction(stAmount=1, scAmount=1_000)
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid]))[tid] == TradeState.SETTLED
        names = [e["event"] for e in await engine.store.audit(tid)]
        assert "lock_st_mined" in names and "claim_st_mined" in names and "settle_dvp_sent" not in names
    finally:
        await close_engine(engine)


@pytest.mark.slow  # in `make test-slow` (CI runs it): keeps `make test` near 10 minutes
async def test_the_same_ledger_demo_never_flushes_a_redis_it_did_not_start(net):
    """`make demo` reused a Redis listening on 6379 and ran FLUSHDB on its db 1: someone else's data was gone."""
    from relayer.demo import _same_ledger
    from relayer.store import Store

    settings = net.settings([net.seller, net.buyer], db=0)
    other = Store.from_url(settings.redis_url.rsplit("/", 1)[0] + "/1")
    await other.r.set("someone-else:data", "keep me")
    try:
        assert await _same_ledger(lambda *_: None, settings=settings) == "SETTLED"
        assert await other.r.get("someone-else:data") == "keep me"
    finally:
        await other.r.delete("someone-else:data")
        await other.close()


TOKEN = "two-firms-token-" + "z" * 16


async def test_two_firms_settle_a_same_ledger_trade_once_their_dvp_signatures_meet(one_chain: Net, tmp_path):
    """Each firm's relayer holds only its own party's key and its own Redis; the back office hands each firm's DvP
    signature (GET …/authorizations/dvp) to the other (POST …/authorizations); one settle moves both legs."""
    import json

    from deploy.processes import RedisProcess, free_port
    from tests.relayer_kit import api_session, drive_together

    net = one_chain
    dvp = net.doc["st"]["dvp"]
    own_redis = RedisProcess(port=free_port(), data_dir=tmp_path).start()
    seller_firm = await net.engine([net.seller], dvp_contract=dvp)
    buyer_firm = await net.engine([net.buyer], dvp_contract=dvp, redis_url=own_redis.url)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        async with api_session(seller_firm, TOKEN) as seller_api, api_session(buyer_firm, TOKEN) as buyer_api:
            async def get(api, tid):
                async with api.get(f"/v1/trades/{tid}/authorizations/dvp", headers=auth) as r:
                    return r.status, await r.json()

            async def post(api, tid, body):
                async with api.post(f"/v1/trades/{tid}/authorizations", data=json.dumps(body), headers=auth) as r:
                    return r.status, await r.json()

            signed = await net.instruction(stAmount=4, scAmount=4_000, deadline=await net.st.now() + 120)
            tid = signed.instruction.tradeId
            before = await _balances(net)
            assert await seller_firm.intake(signed) and await buyer_firm.intake(signed)
            for _ in range(10):  # alone, neither can settle
                await seller_firm.step()
                await buyer_firm.step()
            assert await _balances(net) == before
            status, from_seller = await get(seller_api, tid)
            assert status == 200 and list(from_seller["signatures"]) == [net.seller.address]
            status, from_buyer = await get(buyer_api, tid)
            assert status == 200 and list(from_buyer["signatures"]) == [net.buyer.address]
            seller_sig = from_seller["signatures"][net.seller.address]
            buyer_sig = from_buyer["signatures"][net.buyer.address]
            # refusals first: nothing kept
            wrong = await post(seller_api, tid, {"leg": "dvp", "party": net.buyer.address, "signature": seller_sig})
            assert wrong[0] == 403 and wrong[1]["error"] == "wrong_signer"
            outsider = await post(seller_api, tid, {"leg": "dvp", "party": net.pts.address, "signature": buyer_sig})
            assert outsider[0] == 422 and outsider[1]["error"] == "wrong_terms"
            from tests.test_holder_signed import high_s

            malleated = high_s({"leg": "dvp", "party": net.buyer.address, "signature": buyer_sig})
            assert (await post(seller_api, tid, malleated))[1]["error"] == "wrong_signer"  # the chain would refuse
            assert (await post(buyer_api, tid, {"leg": "dvp", "party": net.seller.address,
                                                "signature": seller_sig}))[0] == 202
            assert (await post(seller_api, tid, {"leg": "dvp", "party": net.buyer.address,
                                                 "signature": buyer_sig}))[0] == 202
            assert await drive_together([seller_firm, buyer_firm], tid) == {TradeState.SETTLED}
            await seller_firm.drain()
            await buyer_firm.drain()
            assert await _balances(net) == (before[0] - 4, before[1] + 4, before[2] + 4_000, before[3] - 4_000)
            mined = [e for f in (seller_firm, buyer_firm) for e in await f.store.audit(tid)
                     if e["event"] == "settle_dvp_mined"]
            assert len(mined) == 1  # one settle moved both legs; the other firm saw it done
    finally:
        await close_engine(seller_firm)
        await close_engine(buyer_firm)
        own_redis.stop()
