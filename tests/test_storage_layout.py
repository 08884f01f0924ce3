"""The contracts' declared storage, read from solc's own `storageLayout` output, is exactly what has been argued safe;
and every external function and custom error of ours is documented (solc's devdoc/userdoc output).

Swaps (escrow) and settlements (AtomicDvP) live at keccak-derived slots outside Solidity's layout (see each
contract's storage note). A new state variable, inherited or declared, must be added here with the argument why
it cannot share a slot with them; otherwise this test fails.
"""

from __future__ import annotations

import copy

import pytest
import solcx
from eth_utils import keccak

from adapters.contracts import SWAP_NAMESPACE
from deploy.compile import COMPILER_SETTINGS, collect_sources
from deploy.toolchain import solc_binary

# contract -> {(label, slot, type): why it cannot collide with a swap / settlement slot}
ARGUED = {
    "HashedTimelockEscrow": {
        ("_nameFallback", "0", "t_string_storage"): "slot 0; a long name's bytes at keccak256(0): 32-byte preimage",
        ("_versionFallback", "1", "t_string_storage"): "slot 1; bytes at keccak256(1): 32-byte preimage",
        ("_nonces", "2", "t_mapping(t_address,t_uint256)"):
            "entries at keccak256(abi.encode(owner, 2)): 64-byte preimage; swap slots hash 96 bytes",
    },
    "AtomicDvP": {
        ("_nameFallback", "0", "t_string_storage"): "slot 0; bytes at keccak256(0): 32-byte preimage",
        ("_versionFallback", "1", "t_string_storage"): "slot 1; bytes at keccak256(1): 32-byte preimage",
    },
}


# inherited from OpenZeppelin, documented there
INHERITED = {"nonces(address)", "eip712Domain()", "InvalidShortString()", "StringTooLong(string)",
             "InvalidAccountNonce(address,uint256)", "SafeERC20FailedOperation(address)"}


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict]:
    settings = copy.deepcopy(COMPILER_SETTINGS)
    settings["outputSelection"] = {"*": {"*": ["storageLayout", "devdoc", "userdoc", "abi"]}}
    out = solcx.compile_standard({"language": "Solidity", "sources": collect_sources(), "settings": settings},
                                 solc_binary=solc_binary(), allow_empty=True)
    found = {}
    for unit, contracts in out["contracts"].items():
        for name in ARGUED:
            if name in contracts and unit.startswith("src/"):
                found[name] = contracts[name]
    assert set(found) == set(ARGUED)
    return found


@pytest.fixture(scope="module")
def layouts(compiled) -> dict[str, list[dict]]:
    return {name: c["storageLayout"]["storage"] for name, c in compiled.items()}


@pytest.mark.parametrize("contract", sorted(ARGUED))
def test_every_state_variable_has_an_argument_why_it_cannot_collide(layouts, contract):
    declared = {(v["label"], v["slot"], v["type"]) for v in layouts[contract]}
    unargued = declared - set(ARGUED[contract])
    assert not unargued, (f"{contract} has state nobody has argued cannot share a slot with a swap or settlement: "
                          f"{sorted(unargued)}; add each to ARGUED with the reason")
    assert declared == set(ARGUED[contract]), f"{contract}: ARGUED lists variables that no longer exist"


def test_the_swap_namespace_literal_is_the_documented_string():
    source = (collect_sources()["src/HashedTimelockEscrow.sol"]["content"])
    literal = "0x" + keccak(text="dvp.HashedTimelockEscrow.swap").hex()
    assert SWAP_NAMESPACE == keccak(text="dvp.HashedTimelockEscrow.swap")
    assert f"SWAP_NAMESPACE = {literal};" in source


def _signature(item: dict) -> str:
    def kind(i: dict) -> str:
        if i["type"].startswith("tuple"):
            return "(" + ",".join(kind(c) for c in i["components"]) + ")" + i["type"][len("tuple"):]
        return i["type"]
    return f"{item['name']}({','.join(kind(i) for i in item['inputs'])})"


@pytest.mark.parametrize("contract", sorted(ARGUED))
def test_every_external_function_and_error_is_documented(compiled, contract):
    c = compiled[contract]
    dev, user = c["devdoc"], c["userdoc"]
    missing = []
    for item in c["abi"]:
        sig = _signature(item) if "name" in item else ""
        if item["type"] == "function" and sig not in INHERITED:
            documented = dev.get("methods", {}).get(sig, {})
            notice = user.get("methods", {}).get(sig, {}).get("notice")
            is_constant = sig.endswith("()") and item["stateMutability"] == "view" and sig[:-2].isupper()
            if not (notice or documented.get("details")):
                missing.append(f"{sig}: no @notice")
            if not is_constant:
                for arg in item["inputs"]:
                    if arg["name"] not in documented.get("params", {}):
                        missing.append(f"{sig}: no @param {arg['name']}")
                if item["outputs"] and not documented.get("returns"):
                    missing.append(f"{sig}: no @return")
        if item["type"] == "error" and sig not in INHERITED and not user.get("errors", {}).get(sig):
            missing.append(f"error {sig}: no @notice")
    assert not missing, missing
