"""End-to-end settlement on two real anvil chains and a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from relayer.errors import ConflictingInstruction, InvalidInstruction
from relayer.protocol.states import TradeState
from relayer.store import audit_key, trade_key
from tests.relayer_kit import Net, close_engine, drive


async def test_one_trade_settles_atomically(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction(stAmount=7, scAmount=7_000)
        tid = signed.instruction.tradeId
        b = [await net.balance(net.st, net.st_token, net.buyer.address),
             await net.balance(net.sc, net.sc_token, net.seller.address)]
        assert await engine.intake(signed) is True
        states = await drive(engine, [tid])
        assert states[tid] == TradeState.SETTLED
        assert await net.balance(net.st, net.st_token, net.buyer.address) == b[0] + 7
        assert await net.balance(net.sc, net.sc_token, net.seller.address) == b[1] + 7_000
        # drive() drained the engine, which archives a finished trade compactly: same record and timeline,
        # no sealed secret, no separate audit list
        assert await engine.store.r.hexists(trade_key(tid), "archive")
        assert not await engine.store.r.exists(audit_key(tid))
        rec = await engine.store.get(tid)
        assert rec is not None and rec.state == TradeState.SETTLED and rec.get("secret") is None
        assert rec.signed == signed and rec.get_int("t_st")
        assert await engine.store.archive(tid) is False  # once
        events = [e["event"] for e in await engine.store.audit(tid)]
        for expected in ("accepted", "secret_created", "lock_st_mined", "lock_sc_mined", "claim_sc_mined",
                         "claim_st_mined"):
            assert expected in events
        # the secret was sealed before the ST lock was sent
        assert events.index("secret_created") < events.index("lock_st_sent")
    finally:
        await close_engine(engine)


async def test_fifty_concurrent_trades_settle(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = [await net.instruction(stAmount=1, scAmount=100 + i) for i in range(50)]
        ids = [s.instruction.tradeId for s in signed]
        before = await net.balance(net.st, net.st_token, net.buyer.address)
        await asyncio.gather(*(engine.intake(s) for s in signed))
        states = await drive(engine, ids, timeout=120)
        assert set(states.values()) == {TradeState.SETTLED}, states
        assert await net.balance(net.st, net.st_token, net.buyer.address) == before + 50
        # trades due in the same round for the same account went out as batch transactions
        sent = [e for tid in ids for e in await engine.store.audit(tid) if e["event"].endswith("_sent")]
        assert any(e.get("batch", 1) > 1 for e in sent)
        assert len({e["tx"] for e in sent}) < len(sent)
    finally:
        await close_engine(engine)


async def test_same_instruction_twice_is_one_trade_and_other_terms_conflict(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction()
        assert await engine.intake(signed) is True
        assert await engine.intake(signed) is False
        assert await engine.store.open_trades() == [signed.instruction.tradeId]
        other = await net.instruction(tradeId=signed.instruction.tradeId, scAmount=1)
        with pytest.raises(ConflictingInstruction):
            await engine.intake(other)
        rec = await engine.store.get(signed.instruction.tradeId)
        assert rec is not None and rec.signed.instruction.scAmount == 12_345
    finally:
        await engine.store.r.flushdb()
        await close_engine(engine)


@pytest.mark.parametrize(
    "over, code",
    [
        ({"stToken": "0x" + "11" * 20}, "unknown_token"),
        ({"stChainId": 999}, "unknown_chain"),
        ({"deadline": 1}, "deadline_too_close"),
    ],
)
async def test_bad_instructions_are_refused_and_nothing_written(net: Net, over, code):
    from eth_utils import to_checksum_address

    if "stToken" in over:
        over["stToken"] = to_checksum_address(over["stToken"])
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction(**over)
        with pytest.raises(InvalidInstruction) as err:
            await engine.intake(signed)
        assert err.value.code == code
        assert await engine.store.get(signed.instruction.tradeId) is None
    finally:
        await close_engine(engine)


async def test_untrusted_signer_is_refused(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    try:
        signed = await net.instruction(pts_key=net.buyer.key)
        with pytest.raises(InvalidInstruction) as err:
            await engine.intake(signed)
        assert err.value.code == "untrusted_signer"
    finally:
        await close_engine(engine)


async def test_a_trade_for_a_chain_that_has_not_answered_yet_is_not_refused(net: Net):
    """Found by the long chaos run: a worker started during an ST outage answered 422 unknown_chain to every trade
    (it had no chain id to compare with); it must say 'not ready' (503) so the PTS retries."""
    from deploy.processes import free_port
    from relayer.errors import NotReady
    from relayer.service import build_engine

    settings = net.settings([net.seller, net.buyer], st_rpc_url=f"http://127.0.0.1:{free_port()}")
    engine = build_engine(settings)
    try:
        await engine.start()  # the coin ledger answers: the worker runs
        assert engine.started and engine.sc.follower is not None and engine.st.follower is None
        with pytest.raises(NotReady):
            await engine.validate(await net.instruction())
    finally:
        await close_engine(engine)
