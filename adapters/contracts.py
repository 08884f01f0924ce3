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
from eth_abi import encode as abi_encode
from eth_abi.exceptions import EncodingError
from eth_hash.auto import keccak as keccak256
from eth_utils import function_signature_to_4byte_selector, keccak
from eth_utils.abi import collapse_if_tuple
from web3 import AsyncWeb3

from adapters.addresses import checksum
from web3.contract import AsyncContract



ARTIFACTS = "artifacts.json"  # package data of `adapters`


@cache
def load_artifacts() -> dict[str, dict[str, Any]]:
    """{contract name: {abi, bytecode, deployedBytecode, source}} of every compiled contract."""
    doc: dict[str, Any] = json.loads(resources.files("adapters").joinpath(ARTIFACTS).read_text())
    contracts: dict[str, dict[str, Any]] = doc["contracts"]
    return contracts


@cache
def bytecode_for(name: str, evm_version: str = "cancun") -> str:
    """Creation bytecode of a ledger contract built for `evm_version` (cancun, or london for pre-Shanghai chains)."""
    if evm_version == "cancun":
        return str(load_artifacts()[name]["bytecode"])
    doc: dict[str, Any] = json.loads(resources.files("adapters").joinpath(ARTIFACTS).read_text())
    try:
        return str(doc["evm_variants"][evm_version][name]["bytecode"])
    except KeyError:
        raise ValueError(f"no {evm_version} build of {name}: built are cancun and "
                         f"{', '.join(doc.get('evm_variants', {}))}") from None


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
    return keccak256(SWAP_NAMESPACE + bytes(12) + bytes.fromhex(sender[2:]) + trade_id)


def terms_hash(token: str, amount: int, receiver: str, hashlock: bytes, timelock: int) -> bytes:
    """What the escrow stores for a live swap with these terms (HashedTimelockEscrow.termsHash)."""
    return keccak256(bytes(12) + bytes.fromhex(token[2:]) + amount.to_bytes(32, "big") + bytes(12)
                     + bytes.fromhex(receiver[2:]) + hashlock + timelock.to_bytes(32, "big"))


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
    return keccak256(b"\x19" + m.version + m.header + m.body)


def encode_call(name: str, fn: str, *args: Any) -> str:
    """Calldata for `fn(*args)` of contract `name`: selector + eth_abi encoding of the ABI's input types.

    Straight to eth_abi (web3's encode_abi normalises every argument first, which cost more CPU than anything
    else in a 1,000-swap batch); an overloaded name, or an argument eth_abi takes only once normalised (hex
    text for bytes), goes through web3."""
    plan = _call_plan(name, fn)
    if plan is None:
        data: str = _offline(name).encode_abi(fn, args=list(args))
        return data
    selector, types = plan
    try:
        return "0x" + (selector + abi_encode(types, list(args))).hex()
    except EncodingError:  # e.g. hex text for a bytes argument: web3 normalises it first
        fallback: str = _offline(name).encode_abi(fn, args=list(args))
        return fallback


@cache
def _call_plan(name: str, fn: str) -> tuple[bytes, list[str]] | None:
    """(selector, input types) of the one function `fn` of contract `name`; None when it is overloaded."""
    items = [i for i in abi(name) if i.get("type") == "function" and i.get("name") == fn]
    if len(items) != 1:
        if not items:
            raise ValueError(f"{name} has no function {fn}")
        return None
    types = [collapse_if_tuple(dict(i)) for i in items[0]["inputs"]]
    return function_signature_to_4byte_selector(f"{fn}({','.join(types)})"), types


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


@cache
def event_specs(name: str) -> dict[bytes, tuple[str, list[tuple[str, str]], list[tuple[str, str]]]]:
    """topic0 -> (event name, indexed (arg, type) in order, non-indexed (arg, type) in order) of contract `name`."""
    out = {}
    for item in abi(name):
        if item.get("type") != "event" or item.get("anonymous"):
            continue
        inputs = [(i["name"], collapse_if_tuple(dict(i)), bool(i.get("indexed"))) for i in item["inputs"]]
        topic = bytes(keccak(text=f"{item['name']}({','.join(t for _, t, _ in inputs)})"))
        out[topic] = (item["name"], [(n, t) for n, t, ix in inputs if ix], [(n, t) for n, t, ix in inputs if not ix])
    return out


def decode_event(name: str, topics: list[bytes], data: bytes) -> tuple[str, dict[str, Any]] | None:
    """(event name, args) of a log of contract `name`, addresses checksummed; None for an event it does not
    declare. Straight to eth_abi: web3's process_log costs several times more per log."""
    spec = event_specs(name).get(topics[0]) if topics else None
    if spec is None:
        return None
    event, indexed, plain = spec
    args: dict[str, Any] = {}
    for (arg, typ), topic in zip(indexed, topics[1:]):
        args[arg] = abi_decode([typ], topic)[0]
    args.update(zip((arg for arg, _ in plain), abi_decode([typ for _, typ in plain], data)))
    for arg, typ in indexed + plain:
        if typ == "address":
            args[arg] = checksum(args[arg])
    return event, args
