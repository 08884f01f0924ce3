"""RPC endpoints that answer but lie (issue 18), as a proxy in front of the real anvil (chaos.lying_node):
- a primary whose head stops advancing while the chain moves on: the worker notices a head that has not moved for
  several block times, finds the standby ahead, fails over to it, alerts (log + metric) and settles;
- a coin-ledger node that leaves out the counterparty's Claimed event (chaos seed 7, bot_late_claim): its own
  headers' logs blooms show it, so the follower asks the standby, learns the secret and the ST is claimed;
- a primary that drops logs and hides them in its headers too: the seller's ST lock is on chain but no event says so. At T_st the trade is not
  aborted with the lock left in the escrow: the escrow's slot shows the lock, the chain is read again from the
  standby, and the lock is refunded;
- a coin-ledger node that leaves out Claimed events (defect 14: the follower never shows our SC claim): the reveal
  is proven from the escrow slot k deep, the ST claim follows before T_st, and the chain is read again from the
  standby, which shows the claim: the trade settles."""

from __future__ import annotations

import pytest

from chaos.lying_node import LyingNode
from relayer import metrics
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive

pytestmark = pytest.mark.slow  # fault injection: `make test-slow` (CI runs it after `make test`)


async def test_a_primary_whose_head_stops_is_left_for_the_standby_that_is_ahead(net: Net):
    real = net.doc["st"]["rpc_url"]
    proxy = await LyingNode(real).start()
    engine = await net.engine([net.seller, net.buyer], st_rpc_url=proxy.url, st_rpc_standby_urls=real)
    try:
        side = next(s for s in engine.sides if s.name == "st")
        assert side.ledger.chain.active_url == proxy.url
        stalls = metrics.RPC_HEAD_STALLS.labels("st")._value.get()
        proxy.frozen = await net.st.block_number()  # from now on the primary lies about the head
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        assert side.ledger.chain.active_url == real
        assert metrics.RPC_HEAD_STALLS.labels("st")._value.get() == stalls + 1
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_a_node_that_drops_logs_never_makes_a_live_lock_look_absent(net: Net):
    real = net.doc["st"]["rpc_url"]
    proxy = await LyingNode(real).start()
    proxy.drop_logs = True
    proxy.hide_in_blooms = True  # the headers do not give the lock away: only the escrow slot does
    engine = await net.engine([net.seller, net.buyer], st_rpc_url=proxy.url, st_rpc_standby_urls=real)
    try:
        missed = metrics.LOCKS_WITHOUT_EVENT.labels("st")._value.get()
        before = await net.balance(net.st, net.st_token, net.seller.address)
        signed = await net.instruction(deadline=await net.st.now() + 40)  # T_st = the deadline: soon
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        rec = None
        for _ in range(200):  # the lock goes out and is mined; the follower hears nothing of it
            await drive(engine, [tid], until=set(), timeout=0.2)
            rec = await engine.store.get(tid)
            if any(e["event"] == "lock_st_mined" for e in await engine.store.audit(tid)):
                break
        assert rec is not None and rec.state == TradeState.MATCHED
        assert await net.balance(net.st, net.st_token, net.seller.address) == before - signed.instruction.stAmount
        await net.warp(45)  # past T_st: with no lock event, decide() would call it ABORTED
        final = (await drive(engine, [tid], timeout=60))[tid]
        events = [e["event"] for e in await engine.store.audit(tid)]
        assert "lock_without_event" in events and final == TradeState.ABORTED, events
        assert "refund_st_mined" in events  # the lock was found again and refunded, not left in the escrow
        assert await net.balance(net.st, net.st_token, net.seller.address) == before
        assert metrics.LOCKS_WITHOUT_EVENT.labels("st")._value.get() > missed
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_our_sc_claim_the_coin_ledgers_node_never_shows_is_proven_from_the_slot_and_the_st_claim_follows(net: Net):
    from adapters.contracts import event_specs
    from adapters.htlc import ESCROW

    real = net.doc["sc"]["rpc_url"]
    proxy = await LyingNode(real).start()
    proxy.drop_topics = {"0x" + t.hex() for t, spec in event_specs(ESCROW).items() if spec[0] == "Claimed"}
    proxy.hide_in_blooms = True  # the headers do not give the claim away: only the escrow slot does
    engine = await net.engine([net.seller, net.buyer], sc_rpc_url=proxy.url, sc_rpc_standby_urls=real)
    try:
        proven = metrics.REVEALS_PROVEN_DIRECTLY.labels("sc")._value.get()
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=90))[tid] == TradeState.SETTLED
        events = [e["event"] for e in await engine.store.audit(tid)]
        assert "reveal_confirmed_directly" in events, events
        assert events.index("reveal_confirmed_directly") < events.index("claim_st_sent"), events
        assert metrics.REVEALS_PROVEN_DIRECTLY.labels("sc")._value.get() == proven + 1
        side = next(s for s in engine.sides if s.name == "sc")
        assert side.ledger.chain.active_url == real  # read again from the standby, which shows the claim
        ins = signed.instruction
        assert await net.balance(net.st, ins.stToken, ins.buyerStAccount) >= ins.stAmount
        # the buyer's swap's claim, asked for alone (what a worker does whose follower has not shown the lock)
        import hashlib

        sid = side.ledger.swap_id_of(ins.buyerScAccount, ins.trade_id_bytes)
        found = await side.ledger.claims_at_depth([sid, b"\x01" * 32], net.doc["sc"]["deploy_block"], 1)
        hashlock = bytes.fromhex((await engine.store.get(tid)).fields["hashlock"])
        assert found is not None and list(found.preimages) == [sid]
        assert hashlib.sha256(found.preimages[sid]).digest() == hashlock
    finally:
        await close_engine(engine)
        await proxy.stop()


async def test_a_counterpartys_sc_claim_the_coin_ledgers_node_leaves_out_is_read_from_the_standby_and_the_st_claimed(
        net: Net):
    """Chaos seed 7 (bot_late_claim): we act for the buyer; the bot seller claims our SC lock while the coin-ledger
    node answers eth_getLogs without Claimed events. Its own block headers' logs blooms show the escrow's Claimed
    event, so the follower does not read past that block: it asks the standby, learns the secret and claims the
    ST long before T_st."""
    from adapters.contracts import event_specs
    from adapters.htlc import ESCROW
    from tests.test_failure_paths import _bot_reveals_after_sc_lock

    real = net.doc["sc"]["rpc_url"]
    proxy = await LyingNode(real).start()
    proxy.drop_topics = {"0x" + t.hex() for t, spec in event_specs(ESCROW).items() if spec[0] == "Claimed"}
    engine = await net.engine([net.buyer], sc_rpc_url=proxy.url, sc_rpc_standby_urls=real)
    try:
        withheld = metrics.LOGS_WITHHELD.labels("sc")._value.get()
        ins, _ = await _bot_reveals_after_sc_lock(net, engine)
        assert (await drive(engine, [ins.tradeId], timeout=30))[ins.tradeId] == TradeState.SETTLED
        assert await net.balance(net.st, ins.stToken, ins.buyerStAccount) >= ins.stAmount
        assert metrics.LOGS_WITHHELD.labels("sc")._value.get() > withheld
        side = next(s for s in engine.sides if s.name == "sc")
        assert side.ledger.chain.active_url == real  # left for the standby, whose answers match the headers
    finally:
        await close_engine(engine)
        await proxy.stop()
