"""AtomicDvP (the same-ledger fast path) on a real anvil: both legs in one transaction or neither."""

from __future__ import annotations

import os

import pytest
from eth_account import Account

from web3.logs import DISCARD

from adapters.contracts import abi, dvp_typed_data
from deploy.deployer import MAX_UINT256
from tests.chain_kit import Kit

D, ST, SC = "AtomicDvP", "SecurityToken", "Stablecoin"


@pytest.fixture(scope="module")
async def env(kit: Kit):
    issuer, seller, buyer, relayer, outsider = kit.accounts[:5]
    dvp = await kit.deploy(issuer, D)
    st = await kit.deploy(issuer, ST, "Test Bond", "TB", issuer.address)
    sc = await kit.deploy(issuer, SC, "Yen Coin", "JPYC", 0, issuer.address)
    for token in (st, sc):
        await kit.tx(issuer, ST, token, "setAllowed", [seller.address, buyer.address], True)
    await kit.tx(issuer, ST, st, "issue", seller.address, 1_000)
    await kit.tx(issuer, SC, sc, "issue", buyer.address, 1_000_000, b"d" * 32)
    await kit.tx(seller, ST, st, "approve", dvp, MAX_UINT256)
    await kit.tx(buyer, SC, sc, "approve", dvp, MAX_UINT256)
    return dict(kit=kit, dvp=dvp, st=st, sc=sc, seller=seller, buyer=buyer, relayer=relayer, outsider=outsider)


async def terms(env, st_amount=10, sc_amount=5_000, ttl=600):
    deadline = await env["kit"].now() + ttl
    return (os.urandom(32), env["seller"].address, env["buyer"].address, env["st"], st_amount, env["sc"], sc_amount,
            deadline)


def sign(env, who, t) -> bytes:
    msg = dvp_typed_data(env["dvp"], env["kit"].chain.chain_id, t)
    return bytes(Account.sign_typed_data(env[who].key, full_message=msg).signature)


async def balances(env) -> tuple[int, int, int, int]:
    kit: Kit = env["kit"]
    s, b = env["seller"].address, env["buyer"].address
    return (await kit.view(ST, env["st"], "balanceOf", s), await kit.view(ST, env["st"], "balanceOf", b),
            await kit.view(SC, env["sc"], "balanceOf", s), await kit.view(SC, env["sc"], "balanceOf", b))


async def test_settle_moves_both_legs_once_and_emits_the_digest(env):
    kit: Kit = env["kit"]
    t = await terms(env)
    before = await balances(env)
    receipt = await kit.tx(env["relayer"], D, env["dvp"], "settle", t, sign(env, "seller", t), sign(env, "buyer", t))
    after = await balances(env)
    assert after == (before[0] - 10, before[1] + 10, before[2] + 5_000, before[3] - 5_000)
    digest = await kit.view(D, env["dvp"], "digest", t)
    assert await kit.view(D, env["dvp"], "settled", digest)
    logs = kit.chain.w3.eth.contract(abi=abi(D)).events.Settled().process_receipt(receipt, errors=DISCARD)
    assert logs[0]["args"]["tradeId"] == t[0] and logs[0]["args"]["digest"] == digest
    reason = await kit.reverts(env["relayer"], D, env["dvp"], "settle", t, sign(env, "seller", t),
                               sign(env, "buyer", t))
    assert reason.startswith("AlreadySettled")  # a replay of the same signed terms


@pytest.mark.parametrize("bad", ["wrong_signer", "other_terms", "garbage", "empty_by_outsider"])
async def test_settle_without_both_authorisations_reverts(env, bad):
    t = await terms(env)
    seller_sig, buyer_sig = sign(env, "seller", t), sign(env, "buyer", t)
    if bad == "wrong_signer":
        buyer_sig = sign(env, "outsider", t)
    elif bad == "other_terms":  # the buyer signed a lower price
        buyer_sig = sign(env, "buyer", t[:6] + (t[6] - 1,) + t[7:])
    elif bad == "garbage":
        buyer_sig = os.urandom(65)
    else:
        buyer_sig = b""
    reason = await env["kit"].reverts(env["relayer"], D, env["dvp"], "settle", t, seller_sig, buyer_sig)
    assert reason.startswith("NotAuthorised") and env["buyer"].address.lower() in reason.lower()


async def test_a_party_may_authorise_by_sending_it_itself(env):
    t = await terms(env, st_amount=1, sc_amount=1)
    before = await balances(env)
    await env["kit"].tx(env["buyer"], D, env["dvp"], "settle", t, sign(env, "seller", t), b"")
    assert (await balances(env))[0] == before[0] - 1


async def test_expired_terms_and_a_failing_leg_move_nothing(env):
    kit: Kit = env["kit"]
    t = await terms(env, ttl=5)
    sigs = sign(env, "seller", t), sign(env, "buyer", t)
    await kit.warp(10)
    assert (await kit.reverts(env["relayer"], D, env["dvp"], "settle", t, *sigs)).startswith("Expired")
    before = await balances(env)
    t = await terms(env, sc_amount=before[3] + 1)  # the buyer cannot pay: the ST leg must not move either
    reason = await kit.reverts(env["relayer"], D, env["dvp"], "settle", t, sign(env, "seller", t),
                               sign(env, "buyer", t))
    assert "InsufficientBalance" in reason
    assert await balances(env) == before


async def test_batch_is_all_or_nothing(env):
    kit: Kit = env["kit"]
    good = [await terms(env, st_amount=1, sc_amount=7) for _ in range(3)]
    entries = [(t, sign(env, "seller", t), sign(env, "buyer", t)) for t in good]
    bad = await terms(env)
    before = await balances(env)
    reason = await kit.reverts(env["relayer"], D, env["dvp"], "settleBatch",
                               entries + [(bad, sign(env, "seller", bad), b"")])
    assert reason.startswith("NotAuthorised")
    assert await balances(env) == before
    await kit.tx(env["relayer"], D, env["dvp"], "settleBatch", entries)
    assert await balances(env) == (before[0] - 3, before[1] + 3, before[2] + 21, before[3] - 21)


async def test_an_empty_batch_is_refused_like_the_escrows(env):
    err = await env["kit"].reverts(env["relayer"], D, env["dvp"], "settleBatch", [])
    assert err.startswith("BadBatch")
