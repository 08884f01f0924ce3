"""TxSender.wait on a real anvil under the faults the long chaos run found: a node restarted with an empty
mempool, a node down during the wait, and a nonce taken by another transaction."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from adapters.errors import TransactionDropped
from adapters.evm import EvmChain, TxSender
from deploy.processes import AnvilProcess, free_port
from relayer.leases import WORKER_TOKEN, holder_is_dead
from relayer.store import Store, lease_key
from tests.chain_kit import dev_accounts


async def _hold_mining(chain: EvmChain) -> None:
    """Stop block production so a sent transaction stays in the mempool."""
    await chain.rpc("evm_setIntervalMining", [0])
    await chain.rpc("evm_setAutomine", [False])


async def _known(chain: EvmChain, tx_hash) -> bool:
    return await chain.rpc("eth_getTransactionByHash", [tx_hash.to_0x_hex()]) is not None


async def test_wait_rebroadcasts_at_once_when_a_restarted_node_lost_the_transaction(tmp_path):
    node = AnvilProcess(31338, free_port(), block_time=1, state_file=tmp_path / "st.state").start()
    chain = EvmChain("restart", [node.url], request_timeout=1.0)
    try:
        await chain.connect()
        me, other = dev_accounts(2)
        # rebroadcast_after is long: only the reconnect can explain a prompt rebroadcast
        sender = TxSender(chain, me, rebroadcast_after=60.0, bump_after=120.0)
        await _hold_mining(chain)
        sent = await sender.send(other.address, b"", gas=21_000, value=1)
        assert await _known(chain, sent.tx_hash)
        waiting = asyncio.create_task(sender.wait(sent, timeout=40))
        checked = chain.last_ok
        while chain.last_ok == checked:  # the waiter has asked for the receipt at least once
            await asyncio.sleep(0.05)
        node.stop()
        deadline = time.monotonic() + 20
        while not chain._unreachable:  # the waiter's calls have failed on every attempt: it saw the node down
            assert time.monotonic() < deadline and not waiting.done()
            await asyncio.sleep(0.05)
        node.start()  # interval mining again (command line), mempool empty
        started = time.monotonic()
        receipt = await asyncio.wait_for(waiting, 30)
        assert receipt["status"] == 1
        assert receipt["transactionHash"] == sent.tx_hash  # the same signed bytes, not a new transaction
        assert chain.reconnects >= 1
        assert time.monotonic() - started < 10  # well before the 60 s periodic rebroadcast
    finally:
        await chain.close()
        node.stop()


async def test_wait_raises_dropped_when_another_transaction_takes_the_nonce(tmp_path):
    node = AnvilProcess(31339, free_port()).start()
    chain = EvmChain("nonce", [node.url])
    try:
        await chain.connect()
        me, other = dev_accounts(2)
        await _hold_mining(chain)
        first = TxSender(chain, me, rebroadcast_after=0.3)
        sent = await first.send(other.address, b"", gas=21_000, value=1)
        await chain.rpc("anvil_dropTransaction", [sent.tx_hash.to_0x_hex()])
        rogue = TxSender(chain, me)  # e.g. an operator's wallet using the same key
        taken = await rogue.send(other.address, b"", gas=21_000, value=2)
        assert taken.nonce == sent.nonce
        await chain.rpc("evm_mine", [])
        with pytest.raises(TransactionDropped, match=f"nonce {sent.nonce}"):
            await first.wait(sent, timeout=20)
        assert sent.nonce not in first.in_flight
    finally:
        await chain.close()
        node.stop()


async def test_a_gap_the_node_lists_in_a_block_it_never_applied_is_resent_with_a_new_hash(tmp_path):
    """Found by a chaos run: an anvil restored by --state showed a mined transaction in its block index while the
    account's nonce said it never ran. Every later transaction of the account waited behind that nonce, and the
    gap healer skipped it as "known to the node". Such a nonce is now re-sent as the same intent with a new fee."""
    node = AnvilProcess(31341, free_port()).start()
    chain = EvmChain("restored", [node.url])
    try:
        await chain.connect()
        me, other = dev_accounts(2)
        await _hold_mining(chain)
        sender = TxSender(chain, me)
        lost = await sender.send(other.address, b"", gas=21_000, value=1)
        await chain.rpc("anvil_dropTransaction", [lost.tx_hash.to_0x_hex()])  # it never ran on this state
        later = await sender.send(other.address, b"", gas=21_000, value=2)  # stuck behind the gap
        answers = iter(["in_block"])  # what the restored node answered for the lost one's hash

        async def restored_view(sent):
            return next(answers, "unknown") if sent is lost else await real_view(sent)

        real_view, sender._node_view = sender._node_view, restored_view
        assert await sender.heal_gaps() == 1
        await chain.rpc("evm_mine", [])
        receipt = await sender.wait(later, timeout=10)
        assert receipt["status"] == 1
        mined = await chain.call(lambda w3: w3.eth.get_transaction_count(me.address, "latest"))
        assert mined == later.nonce + 1
        assert len(lost.hashes) == 2  # re-signed (a new fee, a new hash), not the same bytes again
        assert await chain.rpc("eth_getTransactionByHash", [lost.hashes[-1].to_0x_hex()]) is not None
    finally:
        await chain.close()
        node.stop()


def test_holder_is_dead_only_for_an_exited_process_of_this_host():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    name, _pid, ns, nonce = WORKER_TOKEN.rsplit(":", 3)
    dead_token = f"{name.rsplit(':', 1)[0]}:{child.pid}:{ns}:{nonce}"
    assert holder_is_dead(dead_token)
    assert not holder_is_dead(WORKER_TOKEN)  # ourselves
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not holder_is_dead(f"{name.rsplit(':', 1)[0]}:{live.pid}:{ns}:{nonce}")
    finally:
        live.kill()
        live.wait()
    assert not holder_is_dead(dead_token.replace(ns, "4026531836x"))  # another PID namespace
    assert not holder_is_dead(f"relayer@another-host:{child.pid}:{ns}:{nonce}")
    assert not holder_is_dead("garbage")


async def test_a_lease_held_by_a_dead_process_is_taken_over_before_its_ttl(redis_server):
    store = Store.from_url(redis_server.url)
    try:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        name, _pid, ns, nonce = WORKER_TOKEN.rsplit(":", 3)
        dead_token = f"{name.rsplit(':', 1)[0]}:{child.pid}:{ns}:{nonce}"
        await store.r.set(lease_key("account:0xtest"), dead_token, px=60_000)
        held = await store.hold_leases(["account:0xtest"], WORKER_TOKEN, 5_000)
        assert held == {"account:0xtest": dead_token}  # not without proof of death
        held = await store.hold_leases(["account:0xtest"], WORKER_TOKEN, 5_000, dead={"account:0xtest": dead_token})
        assert held == {"account:0xtest": WORKER_TOKEN}
        assert 0 < await store.r.pttl(lease_key("account:0xtest")) <= 5_000
        # a stale "dead" claim cannot steal a lease that has since passed to someone else
        await store.r.set(lease_key("account:0xtest"), "relayer@other:1:1:1", px=60_000)
        held = await store.hold_leases(["account:0xtest"], WORKER_TOKEN, 5_000, dead={"account:0xtest": dead_token})
        assert held == {"account:0xtest": "relayer@other:1:1:1"}
    finally:
        await store.r.delete(lease_key("account:0xtest"))
        await store.close()


async def test_the_send_history_forgets_transactions_once_they_are_deep():
    """Found by the 20,000-trade soak: every sent transaction stayed in `history` (raw bytes and calldata, tens of
    KB for a batch) up to 512 per account, so RSS grew ~1.9 MB per 1,000 trades. A mined transaction goes once it
    is deeper than a reorg the relayer guards against."""
    node = AnvilProcess(31341, free_port(), block_time=None).start()
    chain = EvmChain("deep", [node.url])
    try:
        await chain.connect()
        me, other = dev_accounts(2)
        sender = TxSender(chain, me)
        sent = [await sender.send(other.address, b"\x01" * 4000, gas=200_000) for _ in range(5)]
        for s in sent:
            await sender.wait(s)
        assert len(sender.history) == 5
        # automine: nonce n is in block n + 1 and the head is block 5; only blocks 1-2 are 3 deep
        assert await sender.revive_reorged(depth=3) == 0 and sorted(sender.history) == [2, 3, 4]
        for _ in range(3):
            await chain.rpc("evm_mine", [])
        await sender.revive_reorged(depth=3)
        assert sender.history == {} and sender.shallow == {}
    finally:
        await chain.close()
        node.stop()


async def test_a_base_fee_spike_above_the_fee_ceiling_holds_the_transaction_at_the_ceiling_and_counts_it():
    """DVP_MAX_FEE_GWEI: the fee never goes above the ceiling, however the base fee jumps or bumps pile up. A
    pending transaction is bumped up to the ceiling and waits there; a new one the node refuses at the ceiling
    uses no nonce. Each hold is counted (and logged fee_ceiling_reached)."""
    from adapters.errors import TransactionReverted

    node = AnvilProcess(31339, free_port()).start()
    chain = EvmChain("spike", [node.url])
    gwei = 10**9
    try:
        await chain.connect()
        me, other = dev_accounts(2)
        sender = TxSender(chain, me, bump_after=0.3, max_fee_wei=40 * gwei)
        await chain.rpc("evm_setAutomine", [False])
        await chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(10 * gwei)])
        await chain.rpc("evm_mine", [])
        sent = await sender.send(other.address, b"", gas=21_000, value=1)  # 2 x 10 gwei + tip: under the ceiling
        assert sent.params["maxFeePerGas"] < 40 * gwei and sender.fee_ceiling_hits == 0
        waiting = asyncio.create_task(sender.wait(sent, timeout=60, poll=0.1))
        for _ in range(8):  # the base fee jumps to 100 gwei: every block too dear for it, bumps pile up
            await chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * gwei)])
            await chain.rpc("evm_mine", [])
            await asyncio.sleep(0.4)
            assert sent.params["maxFeePerGas"] <= 40 * gwei and not waiting.done()
        assert sent.params["maxFeePerGas"] == 40 * gwei and sender.fee_ceiling_hits >= 1
        nonce = sender._next_nonce
        with pytest.raises(TransactionReverted):  # a new one: held at 40 gwei, under the base fee, refused
            await sender.send(other.address, b"", gas=21_000, value=2)
        assert sender._next_nonce == nonce  # no nonce used, no gap
        for _ in range(100):  # the fees come down: it is offered again (at most rebroadcast_after later), mined
            await chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(10 * gwei)])
            await chain.rpc("evm_mine", [])
            if waiting.done():
                break
            await asyncio.sleep(0.3)
        assert (await waiting)["status"] == 1
    finally:
        await chain.close()
        node.stop()
