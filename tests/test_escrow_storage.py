"""Swap slots never share storage with anything else the contracts keep (issue 13: a lock with tradeId 2 used to
overwrite the sender's EIP-712 nonce, because both were keccak256(abi.encode(sender, 2))).

On a real anvil: lock, claim, refund and lockWithSig with trade ids 0..16 and 2**256-1, before and after the
same sender used lockWithSig; the sender's nonce and every other swap stay as they were.
"""

from __future__ import annotations

import pytest

from adapters.contracts import swap_id
from deploy.deployer import MAX_UINT256
from tests.chain_kit import Kit, new_secret
from tests.test_contracts import _sign_lock, claim_args

E = "HashedTimelockEscrow"
ST = "SecurityToken"
TRADE_IDS = [i.to_bytes(32, "big") for i in range(17)] + [(2**256 - 1).to_bytes(32, "big")]


@pytest.fixture(scope="module")
async def fresh(kit: Kit):
    """An escrow of its own and a seller that has never signed a lock (its nonce is 0)."""
    issuer, seller, buyer, relayer = kit.accounts[0], kit.accounts[8], kit.accounts[9], kit.accounts[3]
    escrow = await kit.deploy(issuer, E)
    st = await kit.deploy(issuer, ST, "Slot Bond", "SLB", issuer.address)
    await kit.tx(issuer, ST, st, "setAllowed", [escrow, seller.address, buyer.address], True)
    await kit.tx(issuer, ST, st, "issue", seller.address, 10**9)
    await kit.tx(seller, ST, st, "approve", escrow, MAX_UINT256)
    return dict(kit=kit, escrow=escrow, st=st, seller=seller, buyer=buyer, relayer=relayer)


async def _nonce(env) -> int:
    return await env["kit"].view(E, env["escrow"], "nonces", env["seller"].address)


async def _lock(env, trade: bytes, ttl: int, by_sig: bool = False):
    kit: Kit = env["kit"]
    seller = env["seller"]
    secret, h = new_secret()
    terms = (trade, env["st"], 7, env["buyer"].address, h, await kit.now() + ttl)
    nonce = await _nonce(env)
    if by_sig:
        deadline = await kit.now() + 600
        sig = _sign_lock(env, seller, terms, nonce, deadline, kit.chain.chain_id)
        await kit.tx(env["relayer"], E, env["escrow"], "lockWithSig", terms, seller.address, deadline, sig)
        assert await _nonce(env) == nonce + 1  # exactly one nonce used, whatever the trade id
    else:
        await kit.tx(seller, E, env["escrow"], "lockTokens", *terms)
        assert await _nonce(env) == nonce, f"lock with trade id {trade.hex()} changed the sender's nonce"
    swap = (trade, seller.address, *terms[1:])
    assert await kit.view(E, env["escrow"], "isActive", swap)
    return swap, secret


async def _round(env, by_sig: bool) -> None:
    """Every trade id: lock and claim, then lock again and refund (the slot is free after each)."""
    kit: Kit = env["kit"]
    for trade in TRADE_IDS:
        swap, secret = await _lock(env, trade, ttl=3600, by_sig=by_sig)
        before = await kit.view(ST, env["st"], "balanceOf", env["buyer"].address)
        await kit.tx(env["relayer"], E, env["escrow"], "claimTokens", *claim_args(swap, secret))
        assert await kit.view(ST, env["st"], "balanceOf", env["buyer"].address) == before + 7
        assert not await kit.view(E, env["escrow"], "isActive", swap)
    swaps = [(await _lock(env, trade, ttl=30, by_sig=by_sig))[0] for trade in TRADE_IDS]
    await kit.warp(31)
    before = await kit.view(ST, env["st"], "balanceOf", env["seller"].address)
    for swap in swaps:
        await kit.tx(env["relayer"], E, env["escrow"], "refund", swap)
    assert await kit.view(ST, env["st"], "balanceOf", env["seller"].address) == before + 7 * len(swaps)


async def test_small_and_extreme_trade_ids_never_touch_the_senders_nonce(fresh):
    assert await _nonce(fresh) == 0
    await _round(fresh, by_sig=False)  # a sender that never signed a lock
    assert await _nonce(fresh) == 0
    await _round(fresh, by_sig=True)  # by signature: one nonce per lock
    signed = await _nonce(fresh)
    assert signed == 2 * len(TRADE_IDS)
    await _round(fresh, by_sig=False)  # plain locks again, after the nonce was used
    assert await _nonce(fresh) == signed


async def test_a_swap_slot_is_the_namespaced_id_the_adapter_computes(fresh):
    """The relayer reads a swap's state with eth_getStorageAt at swap_id(); it must be the contract's own slot."""
    kit: Kit = fresh["kit"]
    for trade in (TRADE_IDS[2], TRADE_IDS[-1]):
        assert await kit.view(E, fresh["escrow"], "swapIdOf", fresh["seller"].address, trade) == swap_id(
            fresh["seller"].address, trade)
    swap, secret = await _lock(fresh, TRADE_IDS[2], ttl=3600)
    slot = await kit.chain.call(lambda w3: w3.eth.get_storage_at(fresh["escrow"], int.from_bytes(
        swap_id(fresh["seller"].address, TRADE_IDS[2]), "big")))
    assert bytes(slot) == await kit.view(E, fresh["escrow"], "termsHash", *swap[2:])
    await kit.tx(fresh["relayer"], E, fresh["escrow"], "claimTokens", *claim_args(swap, secret))
