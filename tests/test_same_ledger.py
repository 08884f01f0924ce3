"""Same-ledger fast path: ST and SC on one chain settle in ONE AtomicDvP transaction, picked by the relayer."""

from __future__ import annotations

import asyncio

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
