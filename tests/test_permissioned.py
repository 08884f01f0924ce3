"""Permissioned-chain profiles (issue 16): a ledger on a pre-Shanghai EVM with legacy, zero-priced transactions
(as GoQuorum and Besu QBFT/IBFT networks often run), here anvil with `--hardfork berlin --gas-price 0`, settling
against an EIP-1559 chain — on the ST side, and the reverse on the SC side."""

from __future__ import annotations

import pytest

from adapters.errors import LedgerError
from adapters.evm import EvmChain, TxSender
from deploy.deployer import deploy, deploy_chain, onboard_holder
from deploy.devnet import dev_account, ledgers_toml
from deploy.processes import AnvilProcess, free_port
from relayer.protocol.states import TradeState
from tests.relayer_kit import Net, close_engine, drive, generate_key

pytestmark = pytest.mark.slow  # new chains / Sentinel groups per test: `make test-slow` (CI runs it)

PERMISSIONED = ("--hardfork", "berlin", "--gas-price", "0")


async def _ledger(chain: EvmChain, kind: str, evm_version: str) -> dict:
    issuer, seller, buyer = dev_account(0), dev_account(1), dev_account(2)
    dep = await deploy_chain(chain, issuer, kind=kind, token_name=f"P {kind}", token_symbol=f"P{kind.upper()}",
                             evm_version=evm_version)
    holder, other = (seller, buyer) if kind == "st" else (buyer, seller)
    await onboard_holder(chain, issuer, holder, dep, kind=kind, issue_amount=1_000_000)
    await onboard_holder(chain, issuer, other, dep, kind=kind, issue_amount=0)
    return dep.to_dict()


@pytest.mark.parametrize("permissioned", ["st", "sc"])
async def test_a_berlin_zero_gas_legacy_ledger_settles_against_an_eip1559_one(redis_server, tmp_path,
                                                                              permissioned: str):
    nodes = {role: AnvilProcess(17300 + i, free_port(), block_time=0.5,
                                extra_args=PERMISSIONED if role == permissioned else ()).start()
             for i, role in enumerate(("st", "sc"))}
    chains = {role: EvmChain(role, [n.url], fee_mode="legacy" if role == permissioned else "eip1559",
                             gas_price_wei=0 if role == permissioned else None) for role, n in nodes.items()}
    engine = None
    try:
        for c in chains.values():
            await c.connect()
        pchain = chains[permissioned]
        # the chain is what it claims to be: no type-2 transactions, no PUSH0
        plain = EvmChain("plain", [nodes[permissioned].url])
        with pytest.raises(LedgerError):
            await TxSender(plain, dev_account(7)).send(dev_account(8).address, b"", gas=21_000, value=1)
        await plain.close()
        with pytest.raises(LedgerError):  # the cancun build's PUSH0 is an invalid opcode before Shanghai
            await deploy(TxSender(pchain, dev_account(7)), "HashedTimelockEscrow", evm_version="cancun")
        doc = {role: await _ledger(chains[role], role, "london" if role == permissioned else "cancun")
               for role in ("st", "sc")}
        doc["st"]["dvp"] = ""
        path = tmp_path / "ledgers.toml"
        path.write_text(ledgers_toml(doc).replace(
            f'name = "{permissioned}"',
            f'name = "{permissioned}"\nfee_mode = "legacy"\ngas_price_gwei = 0\nconfirmations = 1'))
        net = Net(doc | {"redis_url": redis_server.url}, redis_server.port, chains["st"], chains["sc"],
                  generate_key())
        engine = await net.engine([net.seller, net.buyer], config_file=str(path))
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        sent = [e for e in await engine.store.audit(tid) if e["event"].endswith("_mined")
                and e.get("chain") == permissioned]
        assert sent, "no transaction on the permissioned ledger"
        for e in sent:  # every one of ours there is a legacy transaction at gas price 0
            tx = await pchain.rpc("eth_getTransactionByHash", [e["tx"]])
            assert int(tx["type"], 16) == 0 and int(tx["gasPrice"], 16) == 0
    finally:
        if engine is not None:
            await close_engine(engine)
        for c in chains.values():
            await c.close()
        for n in nodes.values():
            n.stop()


async def test_a_ledger_followed_by_its_finalized_tag_sees_an_event_only_once_the_node_finalized_its_block():
    """finality = "finalized": the follower reads up to the node's `finalized` block (anvil with 4-slot epochs
    finalizes two epochs behind the head), whatever k says."""
    import hashlib
    import os

    from adapters.contracts import encode_call
    from adapters.htlc import EscrowFollower, LockedEvent

    node = AnvilProcess(17310, free_port(), block_time=None, extra_args=("--slots-in-an-epoch", "4")).start()
    chain = EvmChain("fin", [node.url])
    try:
        await chain.connect()
        doc = await _ledger(chain, "st", "cancun")
        follower = EscrowFollower(chain, doc["escrow"], confirmations=1, start_height=doc["deploy_block"],
                                  finalized_tag=True)
        token = next(iter(doc["tokens"].values()))
        await TxSender(chain, dev_account(1)).transact(doc["escrow"], encode_call(
            "HashedTimelockEscrow", "lockTokens", os.urandom(32), token, 5, dev_account(2).address,
            hashlib.sha256(b"s").digest(), await chain.now() + 600))
        locked_at = await chain.block_number()
        seen = [e for e in (await follower.poll()).events if isinstance(e, LockedEvent)]
        assert seen == [] and follower.height < locked_at  # mined, k = 1 deep, not final yet
        for _ in range(8):
            await chain.rpc("evm_mine", [])
        seen = []
        for _ in range(5):
            seen += [e for e in (await follower.poll()).events if isinstance(e, LockedEvent)]
        assert len(seen) == 1 and seen[0].amount == 5 and follower.height >= locked_at
    finally:
        await chain.close()
        node.stop()
