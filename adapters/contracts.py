"""The compiled contracts as the adapters see them: ABIs, call encoding and custom-error decoding.

The ABIs and bytecode ship inside this package (`adapters/artifacts.json`, read with importlib.resources), so an
installed worker needs neither the repository nor a compiler; `deploy.compile` writes that file.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, keccak
from web3 import AsyncWeb3
from web3.contract import AsyncContract



ARTIFACTS = "artifacts.json"  # package data of `adapters`


@cache
def load_artifacts() -> dict[str, dict[str, Any]]:
    """{contract name: {abi, bytecode, deployedBytecode, source}} of every compiled contract."""
    doc: dict[str, Any] = json.loads(resources.files("adapters").joinpath(ARTIFACTS).read_text())
    contracts: dict[str, dict[str, Any]] = doc["contracts"]
    return contracts


@cache
def abi(name: str) -> list[dict[str, Any]]:
    """The ABI of a compiled contract."""
    entries: list[dict[str, Any]] = load_artifacts()[name]["abi"]
    return entries


@cache
def _offline(name: str) -> type[AsyncContract]:
    return AsyncWeb3().eth.contract(abi=abi(name))


# The namespace word of every swap slot's preimage (HashedTimelockEscrow.SWAP_NAMESPACE): a 96-byte preimage can
# never be a slot Solidity assigns to a declared variable or mapping entry (see the contract's storage note).
SWAP_NAMESPACE = bytes(keccak(text="dvp.HashedTimelockEscrow.swap"))


def swap_id(sender: str, trade_id: bytes) -> bytes:
    """The escrow's id (and storage slot) of the swap `sender` locked for `trade_id`:
    keccak256(abi.encode(SWAP_NAMESPACE, sender, tradeId))."""
    return bytes(keccak(SWAP_NAMESPACE + bytes(12) + bytes.fromhex(sender[2:]) + trade_id))


def terms_hash(token: str, amount: int, receiver: str, hashlock: bytes, timelock: int) -> bytes:
    """What the escrow stores for a live swap with these terms (HashedTimelockEscrow.termsHash)."""
    return bytes(keccak(bytes(12) + bytes.fromhex(token[2:]) + amount.to_bytes(32, "big") + bytes(12)
                        + bytes.fromhex(receiver[2:]) + hashlock + timelock.to_bytes(32, "big")))


_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
]
_LOCK_FIELDS = [
    {"name": "tradeId", "type": "bytes32"}, {"name": "token", "type": "address"},
    {"name": "amount", "type": "uint256"}, {"name": "receiver", "type": "address"},
    {"name": "hashlock", "type": "bytes32"}, {"name": "timelock", "type": "uint64"},
    {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"},
]


def lock_typed_data(escrow: str, chain_id: int, terms: tuple[Any, ...], nonce: int, deadline: int) -> dict[str, Any]:
    """The EIP-712 message a holder signs to authorise `lockWithSig(terms, ...)` on this escrow.

    terms = (tradeId, token, amount, receiver, hashlock, timelock); nonce = escrow.nonces(holder).
    """
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, "Lock": _LOCK_FIELDS},
        "primaryType": "Lock",
        "domain": {"name": "DvpHashedTimelockEscrow", "version": "1", "chainId": chain_id, "verifyingContract": escrow},
        "message": dict(zip(("tradeId", "token", "amount", "receiver", "hashlock", "timelock"), terms))
        | {"nonce": nonce, "deadline": deadline},
    }


DVP_FIELDS = ("tradeId", "seller", "buyer", "stToken", "stAmount", "scToken", "scAmount", "deadline")
_DVP_TYPES = [
    {"name": "tradeId", "type": "bytes32"}, {"name": "seller", "type": "address"},
    {"name": "buyer", "type": "address"}, {"name": "stToken", "type": "address"},
    {"name": "stAmount", "type": "uint256"}, {"name": "scToken", "type": "address"},
    {"name": "scAmount", "type": "uint256"}, {"name": "deadline", "type": "uint64"},
]


def dvp_typed_data(contract: str, chain_id: int, terms: tuple[Any, ...]) -> dict[str, Any]:
    """The EIP-712 message each party signs to authorise `AtomicDvP.settle(terms, ...)`; its hash is also the
    settlement's key on chain. terms = (tradeId, seller, buyer, stToken, stAmount, scToken, scAmount, deadline)."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, "DvP": _DVP_TYPES},
        "primaryType": "DvP",
        "domain": {"name": "DvpAtomicSettlement", "version": "1", "chainId": chain_id, "verifyingContract": contract},
        "message": dict(zip(DVP_FIELDS, terms)),
    }


def typed_data_digest(message: dict[str, Any]) -> bytes:
    """The EIP-712 hash a signature over `message` commits to (what ecrecover sees on chain)."""
    from eth_account.messages import encode_typed_data

    m = encode_typed_data(full_message=message)
    return bytes(keccak(b"\x19" + m.version + m.header + m.body))


def encode_call(name: str, fn: str, *args: Any) -> str:
    """Calldata for `fn(*args)` of contract `name`."""
    data: str = _offline(name).encode_abi(fn, args=list(args))
    return data


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for art in load_artifacts().values():
        for item in art["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                table[function_signature_to_4byte_selector(sig)] = (item["name"], types)
    return table


def decode_error(data: str | bytes | None) -> str | None:
    """'SwapExpired(0x.., 1700000000)' for revert data of one of our custom errors, else None."""
    if data is None:
        return None
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else data
    entry = _error_table().get(raw[:4])
    if entry is None:
        return None
    name, types = entry
    try:
        values = abi_decode(types, raw[4:])
    except Exception:  # noqa: BLE001 - malformed data: the name alone is still useful
        return name
    shown = [("0x" + v.hex()) if isinstance(v, bytes) else str(v) for v in values]
    return f"{name}({', '.join(shown)})"
