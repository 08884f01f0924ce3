"""Any number of ledgers (issue 15): one worker follows two ST platforms and one coin ledger, read from a ledgers
file (DVP_CONFIG_FILE), and routes each trade by its instruction's chain ids, with Δ from that pair's own chains.
Three real anvils, a real Redis."""

from __future__ import annotations

import hashlib
import os

import pytest

from adapters.contracts import encode_call
from adapters.evm import EvmChain, TxSender
from deploy.devnet import PERMISSIONED_ANVIL, ROLES, DevnetOptions, _deploy, dev_account, ledgers_toml
from deploy.processes import AnvilProcess, free_port
from relayer.errors import InvalidInstruction
from relayer.protocol.instruction import sign_instruction
from relayer.protocol.states import TradeState
from relayer.service import build_engine
from tests.relayer_kit import Net, close_engine, drive

E = "HashedTimelockEscrow"


@pytest.fixture(scope="module")
async def three(redis_server, tmp_path_factory):
    """ST platforms "st" and "st2", coin ledger "sc", each mining every 0.5 s; a ledgers file that gives st2
    k = 2 and a 2 s block time (a slower platform: a longer Δ for its trades)."""
    from relayer.secrets import generate_key

    nodes = {name: AnvilProcess(chain_id=cid, port=free_port(), block_time=0.5,
                                extra_args=PERMISSIONED_ANVIL if name == "st2" else ()).start()
             for name, cid in (("st", 17101), ("sc", 17102), ("st2", 17103))}
    try:
        doc = await _deploy(DevnetOptions(), nodes["st"].url, nodes["sc"].url, redis_server.url,
                            st2_url=nodes["st2"].url)
        path = tmp_path_factory.mktemp("ledgers") / "ledgers.toml"
        text = ledgers_toml(doc).replace('name = "st2"', 'name = "st2"\nconfirmations = 2\nblock_time = 2.0')
        path.write_text(text.replace('ws_url = "ws://', 'ws_url = "" # ws://'))
        chains = {name: EvmChain(name, [node.url], fee_mode="legacy" if name == "st2" else "eip1559",
                                 gas_price_wei=0 if name == "st2" else None) for name, node in nodes.items()}
        for chain in chains.values():
            await chain.connect()
        net = Net(doc, redis_server.port, chains["st"], chains["sc"], generate_key())
        yield net, path, chains
        for chain in chains.values():
            await chain.close()
    finally:
        for node in nodes.values():
            node.stop()


def _token(net: Net, ledger: str) -> str:
    return next(iter(net.doc[ledger]["tokens"].values()))


async def _engine(net: Net, path, keys):
    engine = build_engine(net.settings(keys, config_file=str(path)))
    await engine.start()
    return engine


async def test_one_worker_settles_on_two_st_platforms_against_one_coin_ledger_each_pair_with_its_own_delta(three):
    net, path, chains = three
    engine = await _engine(net, path, [net.seller, net.buyer])
    try:
        assert [s.name for s in engine.sides] == ["st", "st2", "sc"]
        trades = []
        for ledger in ("st", "st2", "st", "st2"):
            signed = await net.instruction(stChainId=net.doc[ledger]["chain_id"], stToken=_token(net, ledger),
                                           stAmount=3, scAmount=7_000 + len(trades))
            await engine.intake(signed)
            trades.append((ledger, signed.instruction))
        before = {lg: await net.balance(chains[lg], _token(net, lg), net.buyer.address) for lg in ("st", "st2")}
        sc_before = await net.balance(chains["sc"], net.sc_token, net.seller.address)
        states = await drive(engine, [ins.tradeId for _, ins in trades], timeout=90)
        assert set(states.values()) == {TradeState.SETTLED}, states
        for lg in ("st", "st2"):  # each platform delivered its own two trades' tokens, nothing of the other's
            assert await net.balance(chains[lg], _token(net, lg), net.buyer.address) == before[lg] + 6
        assert await net.balance(chains["sc"], net.sc_token, net.seller.address) == sc_before + sum(
            ins.scAmount for _, ins in trades)
        fast, slow = (engine.routes.route(trades[i][1]).policy for i in (0, 1))
        assert (fast.confirmations, fast.block_time, slow.confirmations, slow.block_time) == (1, 0.5, 2, 2.0)
        assert slow.delta() - fast.delta() == 3  # ceil(2·2.0 + 10) − ceil(1·0.5 + 10): the slower chain's k·block time
        for ledger, ins in trades:  # each SC lock expires one Δ of its own pair before its ST lock
            rec = await engine.store.get(ins.tradeId)
            delta = (slow if ledger == "st2" else fast).delta()
            assert rec.get_int("sc_timelock") == rec.get_int("st_timelock") - delta
            sent = {e["chain"] for e in await engine.store.audit(ins.tradeId) if e["event"].endswith("_sent")}
            assert sent == {ledger, "sc"}, sent  # the audit names the ledger each transaction went to
        # st is an ERC-3643 (T-REX) platform; st2 a plain allowlist token on a permissioned profile, where every
        # transaction of ours is legacy at gas price 0
        kinds = {lg: (await engine.routes.by_name[lg].ledger.rules.rules(_token(net, lg))).standard
                 for lg in ("st", "st2")}
        assert kinds == {"st": "erc3643", "st2": "allowlist"}
        for ledger, ins in trades:
            if ledger == "st2":
                for e in await engine.store.audit(ins.tradeId):
                    if e["event"].endswith("_sent") and e["chain"] == "st2":
                        tx = await chains["st2"].rpc("eth_getTransactionByHash", [e["tx"]])
                        assert int(tx["type"], 16) == 0 and int(tx["gasPrice"], 16) == 0
    finally:
        await close_engine(engine)


async def test_a_trade_naming_a_chain_not_followed_in_its_role_or_a_token_its_platform_lacks_is_refused(three):
    net, path, _ = three
    engine = await _engine(net, path, [net.seller])
    try:
        cases = [
            (dict(stChainId=net.doc["sc"]["chain_id"]), "unknown_chain"),  # the coin ledger is no ST platform
            (dict(scChainId=net.doc["st2"]["chain_id"]), "unknown_chain"),  # nor an ST platform a coin ledger
            (dict(stChainId=424242), "unknown_chain"),
            # (each fresh anvil puts its token at the same address, so "st's token on st2" is not expressible here)
            (dict(stChainId=net.doc["st2"]["chain_id"], stToken="0x" + "77" * 20), "unknown_token"),
        ]
        for over, code in cases:
            with pytest.raises(InvalidInstruction) as err:
                await engine.validate(await net.instruction(**over))
            assert err.value.code == code, (over, err.value)
        await engine.validate(await net.instruction(stChainId=net.doc["st2"]["chain_id"], stToken=_token(net, "st2")))
    finally:
        await close_engine(engine)


async def test_a_lock_under_a_trade_id_on_a_ledger_the_trade_is_not_on_is_a_stray_refunded_at_its_timelock(three):
    """Someone locks on st2 under the id of a trade that settles on st: the worker neither acts on it as a leg nor
    ignores it; once its timelock passed it refunds it (to its sender) as a watcher."""
    net, path, chains = three
    issuer, bot = dev_account(ROLES["issuer"]), dev_account(9)
    token, escrow, st2 = _token(net, "st2"), net.doc["st2"]["escrow"], chains["st2"]
    await TxSender(st2, issuer).transact(token, encode_call("SecurityToken", "setAllowed", [bot.address], True))
    await TxSender(st2, issuer).transact(token, encode_call("SecurityToken", "issue", bot.address, 5))
    await TxSender(st2, bot).transact(token, encode_call("SecurityToken", "approve", escrow, 2**256 - 1))
    buyer_before = await net.balance(st2, token, net.buyer.address)
    engine = await _engine(net, path, [net.seller, net.buyer])
    try:
        signed = await net.instruction(stAmount=2, scAmount=4_321)
        ins = signed.instruction
        await engine.intake(signed)
        await TxSender(st2, bot).transact(escrow, encode_call(
            E, "lockTokens", ins.trade_id_bytes, token, 5, net.buyer.address, hashlib.sha256(os.urandom(32)).digest(),
            await st2.now() + 20))
        assert (await drive(engine, [ins.tradeId], timeout=60))[ins.tradeId] == TradeState.SETTLED
        assert await net.balance(st2, token, bot.address) == 0  # still locked
        await st2.rpc("evm_increaseTime", [30])
        await st2.rpc("evm_mine", [])
        engine._next_sweep = 0.0
        for _ in range(200):
            await engine.step()
            await engine.drain(timeout=2)
            if await net.balance(st2, token, bot.address) == 5:
                break
            engine._next_sweep = 0.0
        assert await net.balance(st2, token, bot.address) == 5  # refunded to its sender
        assert await net.balance(st2, token, net.buyer.address) == buyer_before  # never claimed as if it were the trade's leg
    finally:
        await close_engine(engine)


def test_the_same_ledger_instruction_signature_is_unchanged_by_routing():
    """Routing reads chain ids the PTS already signs: an instruction signed before this change verifies the same."""
    from tests.test_protocol import PTS, SALT, instruction

    signed = sign_instruction(instruction(), PTS.key, SALT)
    assert signed.signer(SALT) == PTS.address
