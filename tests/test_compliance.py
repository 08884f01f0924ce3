"""adapters/compliance.py against a fake node: hostile and broken token answers, reverting reads in a batch, node
errors while telling a token's kind apart, batch sizes, one escrow's holding shared by several claims, a swapped
identity registry (found by an outside review of issue 16's change). Fast: no chain."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from adapters.compliance import BATCH_CALLS, Transfer, TransferRules
from adapters.errors import RpcError, RpcUnavailable

TOKEN = to_checksum_address("0x" + "11" * 20)
REGISTRY = to_checksum_address("0x" + "22" * 20)
COMPLIANCE = to_checksum_address("0x" + "33" * 20)
OTHER_REGISTRY = to_checksum_address("0x" + "44" * 20)
ESCROW, BUYER, SELLER = (to_checksum_address("0x" + c * 40) for c in "abc")


def word(v: int) -> str:
    return "0x" + v.to_bytes(32, "big").hex()


def addr(a: str) -> str:
    return "0x" + "00" * 12 + a[2:].lower()


SELECTORS = {function_signature_to_4byte_selector(s).hex(): s for s in (
    "identityRegistry()", "compliance()", "isAllowed(address)", "paused()", "isFrozen(address)",
    "getFrozenTokens(address)", "balanceOf(address)", "isVerified(address)", "canTransfer(address,address,uint256)")}


class FakeNode:
    """An ERC-3643 token at TOKEN whose answers a test can break."""

    name = "fake"

    def __init__(self) -> None:
        self.registry = REGISTRY
        self.balance = {ESCROW: 15, SELLER: 100}
        self.override: dict[tuple[str, str], Any] = {}  # (function, first argument) -> raw answer or exception
        self.fail_next: list[Exception] = []
        self.batches: list[int] = []

    def answer(self, call: dict[str, str]) -> str:
        data = call["data"][2:]
        fn = SELECTORS[data[:8]]
        arg = to_checksum_address("0x" + data[32:72]) if len(data) >= 72 else ""
        if (fn, arg) in self.override or (fn, "") in self.override:
            found = self.override.get((fn, arg), self.override.get((fn, "")))
            if isinstance(found, Exception):
                raise found
            return found
        return {
            "identityRegistry()": addr(self.registry), "compliance()": addr(COMPLIANCE), "paused()": word(0),
            "isFrozen(address)": word(0), "getFrozenTokens(address)": word(0),
            "balanceOf(address)": word(self.balance.get(arg, 0)), "isVerified(address)": word(1),
            "canTransfer(address,address,uint256)": word(1),
        }[fn]

    async def rpc(self, method: str, params: list[Any], parse: Any = None) -> Any:
        if self.fail_next:
            raise self.fail_next.pop(0)
        return self.answer(params[0])

    async def rpc_batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        self.batches.append(len(calls))
        results = []
        for _, params in calls:
            results.append(self.answer(params[0]))  # the first error fails the whole batch, as EvmChain does
        return results


def rules(node: FakeNode) -> TransferRules:
    return TransferRules(node)  # type: ignore[arg-type]


async def test_a_reverting_read_refuses_its_own_transfer_only():
    node = FakeNode()
    node.override[("isVerified(address)", BUYER)] = RpcError("execution reverted", code=3)
    other = to_checksum_address("0x" + "dd" * 20)
    out = await rules(node).refusals([Transfer(TOKEN, ESCROW, BUYER, 5), Transfer(TOKEN, ESCROW, other, 5)])
    assert out == ["token_check_reverted", None]


@pytest.mark.parametrize("raw", ["0x", "0x" + "00" * 31, word(2), None, "0xzz" + "0" * 62])
async def test_a_malformed_answer_refuses_that_transfer_and_raises_nothing(raw):
    node = FakeNode()
    node.override[("isVerified(address)", "")] = raw
    assert await rules(node).refusals([Transfer(TOKEN, ESCROW, BUYER, 5)]) == ["malformed_answer"]


async def test_a_node_error_while_telling_the_kind_apart_is_raised_not_cached_as_plain_erc20():
    node = FakeNode()
    r = rules(node)
    node.fail_next = [RpcError("rate limited", code=-32005)]
    with pytest.raises(RpcError):
        await r.rules(TOKEN)
    assert r.known(TOKEN) is None
    node.fail_next = [RpcUnavailable("down")]
    with pytest.raises(RpcUnavailable):
        await r.rules(TOKEN)
    assert (await r.rules(TOKEN)).standard == "erc3643"  # once the node answers


async def test_batches_stay_under_the_nodes_limit():
    node = FakeNode()
    node.balance[ESCROW] = 10**9
    out = await rules(node).refusals([Transfer(TOKEN, ESCROW, BUYER, 1 + i) for i in range(400)])
    assert out == [None] * 400 and max(node.batches) <= BATCH_CALLS and sum(node.batches) >= 400  # canTransfer each


async def test_a_read_many_transfers_need_is_asked_once_per_batch():
    """A PTS's bulk request names the same token, escrow and buyer in many trades: paused(), the escrow's balance
    and the buyer's verification are one eth_call each per batch, not one per trade."""
    node = FakeNode()
    node.balance[ESCROW] = 10**9
    out = await rules(node).refusals([Transfer(TOKEN, ESCROW, BUYER, 1) for _ in range(40)])
    assert out == [None] * 40 and node.batches == [9]


async def test_claims_out_of_one_escrow_share_its_unfrozen_holding():
    node = FakeNode()  # the escrow holds 15 (an agent forced units out of it)
    out = await rules(node).refusals([Transfer(TOKEN, ESCROW, BUYER, 10), Transfer(TOKEN, ESCROW, BUYER, 10)])
    assert out == [None, f"insufficient_free_units:{ESCROW}"]


async def test_a_swapped_identity_registry_is_read_again_not_trusted_from_the_cache():
    node = FakeNode()
    r = rules(node)
    assert (await r.rules(TOKEN)).identity_registry == REGISTRY
    node.registry = OTHER_REGISTRY  # the owner's setIdentityRegistry
    node.override[("isVerified(address)", BUYER)] = word(0)  # the new registry does not know the buyer
    assert await r.refusals([Transfer(TOKEN, ESCROW, BUYER, 5)]) == [f"not_verified:{BUYER}"]
    assert (await r.rules(TOKEN)).identity_registry == OTHER_REGISTRY
