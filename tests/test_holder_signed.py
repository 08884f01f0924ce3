"""Holder-signed locks (issue 17): the relayer never has the holder's key. The holder's signatures are made by
ethers.js (tests/js/sign_lock.js, types written from docs/holder-signed-locks.md), posted to the real HTTP API of
an engine on the two-anvil devnet, and the lock goes out as lockWithSig/lockWithPermit from an account the relayer
holds. Every refusal is answered with its code and leaves nothing stored or sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.contracts import encode_call
from relayer.protocol.states import TradeState
from relayer.store import Store
from tests.relayer_kit import Net, api_session, close_engine, drive

TOKEN = "holder-test-token-" + "y" * 16
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SIGN_LOCK = Path(__file__).parent / "js" / "sign_lock.js"


class Api:
    """An engine on the devnet with its HTTP API served in the same event loop."""

    def __init__(self, engine: Any, http: aiohttp.ClientSession) -> None:
        self.engine = engine
        self.http = http

    async def request(self, tid: str, leg: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"/v1/trades/{tid}/authorizations/{leg}", headers=AUTH) as r:
            return r.status, await r.json()

    async def post(self, tid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"/v1/trades/{tid}/authorizations", data=json.dumps(body), headers=AUTH) as r:
            return r.status, await r.json()


async def _api(net: Net, keys: list[Any], holders: list[Any]) -> AsyncIterator[Api]:
    from relayer.service import build_engine

    settings = net.settings(keys, holder_signed=",".join(h.address for h in holders))
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    engine = build_engine(settings, store)
    await engine.start()
    try:
        async with api_session(engine, TOKEN) as http:
            yield Api(engine, http)
    finally:
        await close_engine(engine)


async def sign(request: dict[str, Any], key: Any, **changes: Any) -> dict[str, Any]:
    """The holder's POST body, signed by node + ethers v6 (no project code signs)."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(SIGN_LOCK), key.key.to_0x_hex(), json.dumps(changes),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), 60)
    assert proc.returncode == 0, err.decode()
    body: dict[str, Any] = json.loads(out)
    return body


async def until(engine: Any, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await engine.step()
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def _has(engine: Any, tid: str, field: str) -> bool:
    rec = await engine.store.get(tid)
    return rec is not None and rec.get(field) is not None


async def _approve(net: Net, chain: Any, token: str, holder: Any, amount: int) -> None:
    """The holder itself (not the relayer) sets its allowance to the escrow."""
    escrow = net.doc["st" if chain is net.st else "sc"]["escrow"]
    await net.sender(chain, holder).transact(token, encode_call("SecurityToken", "approve", escrow, amount))


async def _events(engine: Any, tid: str) -> list[dict[str, Any]]:
    return list(await engine.store.audit(tid))


async def _sent_by(chain: Any, events: list[dict[str, Any]], event: str) -> str:
    tx = next(e["tx"] for e in events if e["event"] == event)
    return str((await chain.rpc("eth_getTransactionByHash", [tx]))["from"]).lower()


@pytest.fixture
async def seller_holder(net: Net) -> AsyncIterator[Api]:
    """The relayer holds only the buyer's key; the seller's ST locks come from its holder's signatures."""
    async for api in _api(net, [net.buyer], [net.seller]):
        yield api


@pytest.fixture
async def buyer_holder(net: Net) -> AsyncIterator[Api]:
    """The relayer holds only the seller's key; the buyer's SC locks come from its holder's signatures."""
    async for api in _api(net, [net.seller], [net.buyer]):
        yield api


async def test_a_holder_signed_st_lock_with_a_permit_settles_without_the_seller_key(net: Net, seller_holder: Api):
    api, engine = seller_holder, seller_holder.engine
    assert net.seller.address not in engine.settings.accounts()  # the relayer never had it
    await _approve(net, net.st, net.st_token, net.seller, 0)  # no allowance: the permit path
    before = await net.balance(net.st, net.st_token, net.buyer.address)
    signed = await net.instruction()
    tid = signed.instruction.tradeId
    assert await engine.intake(signed)
    await until(engine, lambda: _has(engine, tid, "hashlock"))
    assert (await drive(engine, [tid], until=set(), timeout=1.0))[tid] == TradeState.MATCHED  # nothing without it
    status, request = await api.request(tid, "st")
    assert status == 200, request
    assert request["signer"] == net.seller.address and "permit_typed_data" in request
    assert request["typed_data"]["message"]["hashlock"] == "0x" + (await engine.store.get(tid)).fields["hashlock"]
    body = await sign(request, net.seller)
    assert await api.post(tid, body) == (202, {"trade_id": tid, "leg": "st", "created": True})
    assert await api.post(tid, body) == (202, {"trade_id": tid, "leg": "st", "created": False})  # idempotent
    assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED, await _events(engine, tid)
    assert await net.balance(net.st, net.st_token, net.buyer.address) - before == signed.instruction.stAmount
    events = await _events(engine, tid)
    assert await _sent_by(net.st, events, "lock_st_sent") == net.buyer.address.lower()  # gas from an account held
    assert json.dumps(events).count(body["signature"]) == 0  # the audit trail names the nonce, not the signature


async def test_a_holder_signed_sc_lock_settles_without_the_buyer_key(net: Net, buyer_holder: Api):
    api, engine = buyer_holder, buyer_holder.engine
    await _approve(net, net.sc, net.sc_token, net.buyer, 2**256 - 1)  # an allowance: plain lockWithSig
    signed = await net.instruction()
    tid = signed.instruction.tradeId
    assert await engine.intake(signed)
    status, early = await api.request(tid, "sc")
    assert status == 409 and early["error"] == "too_early"  # the SC lock takes the ST lock's hashlock
    assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == TradeState.ST_LOCKED
    status, request = await api.request(tid, "sc")
    assert status == 200 and "permit_typed_data" not in request, request
    st_lock_t = int((await engine.store.get(tid)).fields["t_st"])
    assert request["typed_data"]["message"]["timelock"] <= st_lock_t - engine.routes.pairs()[0].policy.delta()
    assert (await api.post(tid, await sign(request, net.buyer)))[0] == 202
    assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED, await _events(engine, tid)
    events = await _events(engine, tid)
    assert await _sent_by(net.sc, events, "lock_sc_sent") == net.seller.address.lower()


async def test_each_refusal_has_its_code_and_leaves_nothing_stored_or_sent(net: Net, seller_holder: Api):
    api, engine = seller_holder, seller_holder.engine
    await _approve(net, net.st, net.st_token, net.seller, 2**256 - 1)
    first, second = await net.instruction(), await net.instruction()
    a, b = first.instruction.tradeId, second.instruction.tradeId
    for s in (first, second):
        assert await engine.intake(s)
    await until(engine, lambda: _has(engine, b, "hashlock"))
    # trade A's authorisation uses the holder's nonce n on chain
    request_a = (await api.request(a, "st"))[1]
    body_a = await sign(request_a, net.seller)
    assert (await api.post(a, body_a))[0] == 202
    status, request_b = await api.request(b, "st")
    assert status == 200 and request_b["typed_data"]["message"]["nonce"] == body_a["lock"]["nonce"] + 1  # next free
    used_nonce = body_a["lock"]["nonce"]
    assert (await drive(engine, [a], until={TradeState.ST_LOCKED}, timeout=30))[a] == TradeState.ST_LOCKED
    now = await net.st.now()
    msg = request_b["typed_data"]["message"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        (await sign(request_b, net.seller, amount=str(int(msg["amount"]) + 1)), 422, "wrong_terms"),
        (await sign(request_b, net.seller, receiver=net.seller.address), 422, "wrong_terms"),
        (await sign(request_b, net.seller, hashlock="0x" + "11" * 32), 422, "wrong_terms"),
        (await sign(request_b, net.seller, timelock=signed_deadline(second) + 1), 422, "wrong_terms"),
        (await sign(request_b, net.seller, timelock=now + 5), 422, "wrong_terms"),  # less than 4Δ left
        (await sign(request_b, net.seller, deadline=now), 422, "expired"),
        (await sign(request_b, net.seller, deadline=int(msg["timelock"])), 422, "wrong_terms"),  # past last use
        (high_s(await sign(request_b, net.seller)), 403, "wrong_signer"),  # the same signer, a form ecrecover refuses
        (await sign(request_b, net.seller, nonce=used_nonce), 409, "replayed"),
        (await sign(request_b, net.buyer), 403, "wrong_signer"),
        ({**(await sign(request_b, net.seller)), "signature": body_a["signature"]}, 403, "wrong_signer"),  # A's
        ({**(await sign(request_b, net.seller)), "leg": "sc"}, 422, "not_holder_signed"),
    ]
    for body, status, code in cases:
        got = await api.post(b, body)
        assert got[0] == status and got[1]["error"] == code, (code, got)
    assert (await api.post(a, await sign(request_a, net.seller, deadline=now + 400)))[1]["error"] == \
        "conflicting_authorization"
    rec = await engine.store.get(b)
    assert rec.get("auth_st") is None and rec.get("t_st") is None
    assert not [e for e in await _events(engine, b) if e["event"].startswith(("lock_st", "authorization"))]
    # the honest one is still taken after all that
    assert (await api.post(b, await sign(request_b, net.seller)))[0] == 202


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def high_s(body: dict[str, Any]) -> dict[str, Any]:
    """The same signature in its other form (s -> n - s, v flipped): eth-account recovers the same address from it,
    OpenZeppelin's ECDSA on chain refuses it."""
    raw = bytes.fromhex(body["signature"][2:])
    s = SECP256K1_N - int.from_bytes(raw[32:64], "big")
    return {**body, "signature": "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes([55 - raw[64]])).hex()}


def signed_deadline(signed: Any) -> int:
    return int(signed.instruction.deadline)
