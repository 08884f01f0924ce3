"""The escrow follower on a real anvil: k-deep delivery, reorg detection and rewind, cursor resume."""

from __future__ import annotations

import hashlib
import os

import pytest

from adapters.contracts import encode_call
from adapters.evm import EvmChain, TxSender
from adapters.htlc import EscrowFollower, LockedEvent
from deploy.deployer import MAX_UINT256, deploy
from deploy.processes import AnvilProcess, free_port
from tests.chain_kit import dev_accounts

E = "HashedTimelockEscrow"


@pytest.fixture
async def chain_env():
    node = AnvilProcess(chain_id=31999, port=free_port()).start()
    chain = EvmChain("reorg", [node.url])
    await chain.connect()
    issuer, seller, buyer = dev_accounts(3)
    tx = TxSender(chain, issuer)
    escrow = await deploy(tx, E)
    token = await deploy(tx, "PlainToken")
    await tx.transact(token, encode_call("PlainToken", "mint", seller.address, 10**9))
    s_tx = TxSender(chain, seller)
    await s_tx.transact(token, encode_call("PlainToken", "approve", escrow, MAX_UINT256))
    yield chain, escrow, token, s_tx, buyer
    await chain.close()
    node.stop()


async def _lock(chain, escrow, token, s_tx, buyer) -> bytes:
    trade = os.urandom(32)
    data = encode_call(E, "lockTokens", trade, token, 5, buyer.address, hashlib.sha256(os.urandom(32)).digest(),
                       await chain.now() + 600)
    await s_tx.transact(escrow, data)
    return trade


async def test_events_wait_for_k_confirmations_and_a_reorg_within_k_is_never_seen(chain_env):
    chain, escrow, token, s_tx, buyer = chain_env
    follower = EscrowFollower(chain, escrow, confirmations=3, start_height=await chain.block_number())
    trade = await _lock(chain, escrow, token, s_tx, buyer)
    assert (await follower.poll()).events == []  # 1 deep
    await chain.rpc("anvil_mine", [1])
    assert (await follower.poll()).events == []  # 2 deep
    # a reorg of depth 2 removes the lock's block before it is k deep; anvil does not re-include it
    await chain.rpc("anvil_reorg", [2, []])
    await chain.rpc("anvil_mine", [4])
    seen = []
    for _ in range(3):
        seen += (await follower.poll()).events
    assert not any(isinstance(e, LockedEvent) and e.trade_id == trade for e in seen)


async def test_a_reorg_deeper_than_k_is_detected_and_rewound(chain_env):
    chain, escrow, token, s_tx, buyer = chain_env
    follower = EscrowFollower(chain, escrow, confirmations=1, start_height=await chain.block_number())
    trade = await _lock(chain, escrow, token, s_tx, buyer)
    res = await follower.poll()
    lock_block = res.events[0].block
    assert [e.trade_id for e in res.events] == [trade]
    await chain.rpc("anvil_reorg", [1, []])  # replaces the block holding the lock
    res = await follower.poll()
    assert res.rewound_to is not None and res.rewound_to < lock_block
    await chain.rpc("anvil_mine", [2])
    again = []
    for _ in range(3):
        again += (await follower.poll()).events
    assert trade not in [e.trade_id for e in again if isinstance(e, LockedEvent)]


async def test_rollback_shortens_the_chain_and_the_follower_rewinds(chain_env):
    chain, escrow, token, s_tx, buyer = chain_env
    follower = EscrowFollower(chain, escrow, confirmations=1, start_height=await chain.block_number())
    await _lock(chain, escrow, token, s_tx, buyer)
    await follower.poll()
    height = follower.height
    await chain.rpc("anvil_rollback", [1])
    res = await follower.poll()
    assert res.rewound_to is not None and follower.height < height


async def test_resume_from_a_cursor_misses_nothing(chain_env):
    chain, escrow, token, s_tx, buyer = chain_env
    start = await chain.block_number()
    first = EscrowFollower(chain, escrow, confirmations=1, start_height=start)
    t1 = await _lock(chain, escrow, token, s_tx, buyer)
    got = (await first.poll()).events
    height, bhash = first.cursor
    # the process "dies"; meanwhile two more locks land
    t2 = await _lock(chain, escrow, token, s_tx, buyer)
    t3 = await _lock(chain, escrow, token, s_tx, buyer)
    second = EscrowFollower(chain, escrow, confirmations=1, start_height=height, start_hash=bhash)
    got += (await second.poll()).events
    assert [e.trade_id for e in got if isinstance(e, LockedEvent)] == [t1, t2, t3]


async def test_a_reorged_out_transaction_leaves_no_nonce_gap(chain_env):
    """Trap from Boltz #1201 / ibet-Prime #37: one dropped tx must not block every later tx of the account."""
    chain, escrow, token, s_tx, buyer = chain_env
    s_tx.rebroadcast_after = 0.3
    first = os.urandom(32)
    h = hashlib.sha256(os.urandom(32)).digest()
    timelock = await chain.now() + 600
    await s_tx.transact(escrow, encode_call(E, "lockTokens", first, token, 5, buyer.address, h, timelock))
    await chain.rpc("anvil_reorg", [1, []])  # the lock's block is replaced; anvil does not re-queue the tx
    latest = await chain.call(lambda w3: w3.eth.get_transaction_count(s_tx.address, "latest"))
    assert latest == max(s_tx.history)  # the chain forgot our last nonce: a gap
    second = os.urandom(32)
    receipt = await s_tx.transact(escrow, encode_call(E, "lockTokens", second, token, 5, buyer.address, h, timelock),
                                  timeout=20)
    assert receipt["status"] == 1 and s_tx.gaps_healed == 1
    # the dropped lock was re-broadcast as it was (same intent), so both swaps are live
    from adapters.contracts import swap_id

    for trade in (first, second):
        raw = await chain.call(lambda w3, t=trade: w3.eth.call(
            {"to": escrow, "data": encode_call(E, "swaps", swap_id(s_tx.address, t))}))
        assert bytes(raw) != bytes(32)


async def test_our_transaction_reorged_out_within_k_is_sent_again(chain_env):
    """Found by the long chaos run: an ST claim mined, then taken out by a reorg shallower than k (anvil does
    not re-queue it), was never mined again and T_st passed. Mined transactions are watched until k deep and a
    reorged-out one is re-broadcast as it was."""
    chain, escrow, token, s_tx, buyer = chain_env
    trade = os.urandom(32)
    data = encode_call(E, "lockTokens", trade, token, 5, buyer.address, hashlib.sha256(os.urandom(32)).digest(),
                       await chain.now() + 600)
    receipt = await s_tx.transact(escrow, data)
    assert await s_tx.revive_reorged(depth=3) == 0  # mined and still there: nothing to do
    await chain.rpc("anvil_reorg", [1, []])  # its block is replaced and the transaction dropped
    assert await chain.receipt(receipt["transactionHash"]) is None
    assert await s_tx.revive_reorged(depth=3) == 1
    await chain.rpc("evm_mine", [])
    again = await chain.receipt(receipt["transactionHash"])  # the same signed bytes, mined again
    assert again is not None and again["status"] == 1
    for _ in range(3):
        await chain.rpc("evm_mine", [])
    assert await s_tx.revive_reorged(depth=3) == 0 and not s_tx.shallow  # deep enough now: forgotten


async def test_a_cursor_above_a_shorter_chain_it_never_saw_rewinds_far_enough_to_read_its_events(chain_env):
    """A devnet restarted under a kept Redis (or any chain replaced below the cursor): the follower's cursor is
    above the new head and none of its remembered hashes is on chain. It must not take the blocks up to the new
    head as processed: the lock in them is delivered."""
    chain, escrow, token, s_tx, buyer = chain_env
    head = await chain.block_number()
    stale = EscrowFollower(chain, escrow, confirmations=1, start_height=head + 400, start_hash="0x" + "ab" * 32)
    trade = await _lock(chain, escrow, token, s_tx, buyer)
    seen = []
    for _ in range(4):
        seen += (await stale.poll()).events
    assert trade in [e.trade_id for e in seen if isinstance(e, LockedEvent)]



async def test_a_follower_far_behind_catches_up_in_one_poll_not_a_hundred_blocks_a_round(chain_env):
    """Chaos seed 7: a restarted worker's follower replays from the oldest open trade's first block, 100 blocks
    a poll and one poll a round, so the ST lock of a revealed trade 300 blocks back was known two rounds late
    and its claim missed T_st. A poll goes on reading while it reads whole ranges, within a time bound."""
    chain, escrow, token, s_tx, buyer = chain_env
    start = await chain.block_number()
    await chain.rpc("anvil_mine", [300])
    trade = await _lock(chain, escrow, token, s_tx, buyer)
    await chain.rpc("anvil_mine", [3])
    follower = EscrowFollower(chain, escrow, confirmations=2, start_height=start)
    res = await follower.poll()
    head = await chain.block_number()
    assert follower.height == head - 1  # k=2: everything up to one block below the head, in one poll
    assert any(isinstance(e, LockedEvent) and e.trade_id == trade for e in res.events)


async def test_a_node_failing_partway_through_a_catch_up_loses_none_of_the_ranges_already_read(chain_env):
    """A helper's review of the catch-up above: a later range failing raised out of the poll after the earlier
    ranges had moved the follower's height on, so their events were never delivered (nor read again)."""
    from adapters.errors import RpcUnavailable

    chain, escrow, token, s_tx, buyer = chain_env
    start = await chain.block_number()
    trade = await _lock(chain, escrow, token, s_tx, buyer)  # in the first range
    await chain.rpc("anvil_mine", [300])
    follower = EscrowFollower(chain, escrow, confirmations=2, start_height=start)
    read_logs, calls = follower._logs, []

    async def fails_second(params):
        calls.append(params)
        if len(calls) == 2:
            raise RpcUnavailable("the node went away during the second range")
        return await read_logs(params)

    follower._logs = fails_second  # type: ignore[method-assign]
    res = await follower.poll()
    assert any(isinstance(e, LockedEvent) and e.trade_id == trade for e in res.events)
    assert follower.height == start + 100  # the first range only: the rest is read next poll
    follower._logs = read_logs  # type: ignore[method-assign]
    await follower.poll()
    assert follower.height == await chain.block_number() - 1
