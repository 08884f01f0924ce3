"""Compile contracts_sol/src with the pinned solc through py-solc-x and keep ABI + bytecode in the repo, as package
data of the runtime package (`adapters/artifacts.json`: an installed worker reads it, and needs no compiler).

Every source (ours and OpenZeppelin's) is inlined into the standard-JSON input, so a native solc and the
npm solcjs shim see byte-identical input and produce byte-identical output. `check_artifacts()` recompiles
and compares with what is committed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import solcx

from adapters.contracts import ARTIFACTS
from deploy.toolchain import CONTRACTS_DIR, NODE_MODULES, REPO_ROOT, SOLC_VERSION, solc_binary

SRC_DIR = CONTRACTS_DIR / "src"
ARTIFACTS_FILE = REPO_ROOT / "adapters" / ARTIFACTS

# The settings are part of the pinned build: changing them changes every bytecode.
COMPILER_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 1_000_000},
    "viaIR": True,
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

# Pre-Shanghai chains (many permissioned GoQuorum / Besu networks) reject PUSH0 and later opcodes: the contracts a
# ledger needs are also built for london, same sources and settings but the EVM version (adapters.contracts
# .bytecode_for picks one per ledger at deploy time).
EVM_VARIANTS = ("london",)
LEDGER_CONTRACTS = ("AtomicDvP", "HashedTimelockEscrow", "SecurityToken", "Stablecoin")

_IMPORT_RE = re.compile(r'^\s*import\s+(?:[^"\']*from\s+)?["\']([^"\']+)["\']', re.MULTILINE)


class CompileError(RuntimeError):
    """Raised when solc reports an error; the message holds solc's formatted errors."""


def _resolve(unit: str, imported: str) -> str:
    if imported.startswith("."):
        parts = unit.split("/")[:-1]
        for piece in imported.split("/"):
            if piece == "..":
                parts.pop()
            elif piece != ".":
                parts.append(piece)
        return "/".join(parts)
    return imported


def _read_unit(unit: str) -> str:
    if unit.startswith("@"):
        return (NODE_MODULES / unit).read_text()
    return (CONTRACTS_DIR / unit).read_text()


def collect_sources() -> dict[str, dict[str, str]]:
    """All source units reachable from contracts_sol/src, keyed by their solc unit name."""
    pending = sorted(str(p.relative_to(CONTRACTS_DIR)) for p in SRC_DIR.rglob("*.sol"))
    sources: dict[str, dict[str, str]] = {}
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        text = _read_unit(unit)
        sources[unit] = {"content": text}
        pending.extend(_resolve(unit, imp) for imp in _IMPORT_RE.findall(text))
    return dict(sorted(sources.items()))


def compile_all(evm_version: str = "cancun") -> dict[str, dict[str, Any]]:
    """Compile and return {contract name: {abi, bytecode, deployedBytecode, source}} for our own contracts."""
    settings = COMPILER_SETTINGS | {"evmVersion": evm_version}
    standard_input = {"language": "Solidity", "sources": collect_sources(), "settings": settings}
    try:
        output = solcx.compile_standard(standard_input, solc_binary=solc_binary(), allow_empty=True)
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    artifacts: dict[str, dict[str, Any]] = {}
    for unit, contracts in output["contracts"].items():
        if unit.startswith("@"):
            continue
        for name, data in contracts.items():
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode:
                continue  # abstract contracts and interfaces
            artifacts[name] = {
                "source": unit,
                "abi": data["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
            }
    return dict(sorted(artifacts.items()))


def compile_variants() -> dict[str, dict[str, dict[str, str]]]:
    """{evm version: {ledger contract: {bytecode, deployedBytecode}}} (the ABI is the cancun build's)."""
    out = {}
    for evm in EVM_VARIANTS:
        built = compile_all(evm)
        out[evm] = {n: {k: built[n][k] for k in ("bytecode", "deployedBytecode")} for n in LEDGER_CONTRACTS}
    return out


def render(artifacts: dict[str, dict[str, Any]], variants: dict[str, dict[str, dict[str, str]]]) -> str:
    doc = {"compiler": {"version": SOLC_VERSION, "settings": COMPILER_SETTINGS}, "contracts": artifacts,
           "evm_variants": variants}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def write_artifacts(path: Path = ARTIFACTS_FILE) -> Path:
    """Compile and write the committed artifacts file."""
    path.write_text(render(compile_all(), compile_variants()))
    return path


def check_artifacts(path: Path = ARTIFACTS_FILE) -> list[str]:
    """Names of contracts whose committed artifact differs from a fresh compile (empty list = reproducible)."""
    committed = json.loads(path.read_text())
    fresh = json.loads(render(compile_all(), compile_variants()))
    names = set(committed["contracts"]) | set(fresh["contracts"])
    differing = [n for n in sorted(names) if committed["contracts"].get(n) != fresh["contracts"].get(n)]
    for evm in sorted(set(committed.get("evm_variants", {})) | set(fresh["evm_variants"])):
        if committed.get("evm_variants", {}).get(evm) != fresh["evm_variants"].get(evm):
            differing.append(f"<{evm} builds>")
    if committed["compiler"] != fresh["compiler"]:
        differing.insert(0, "<compiler settings>")
    return differing


if __name__ == "__main__":
    print(write_artifacts())
