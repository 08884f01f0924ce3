"""Where the pinned native tools live: anvil and solc come from npm (package.json), never from the internet."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO_ROOT / "node_modules"
CONTRACTS_DIR = REPO_ROOT / "contracts_sol"  # Solidity sources and the gas report
SOLC_VERSION = "0.8.37"
ANVIL_VERSION = "1.7.1"


class ToolchainError(RuntimeError):
    """Raised when a pinned tool (anvil, solc) is missing; the message says how to install it."""


def anvil_binary() -> Path:
    """The anvil executable shipped by the npm platform package `@foundry-rs/anvil-<os>-<arch>`."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    system = platform.system().lower()
    candidate = NODE_MODULES / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if candidate.exists():
        return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ToolchainError(f"anvil {ANVIL_VERSION} not found at {candidate}; run `npm ci` (or `make setup`)")


def solc_binary() -> Path:
    """A solc that py-solc-x can drive: a native solc of the pinned version if installed, else the npm shim."""
    native = shutil.which("solc")
    if native:
        import subprocess

        out = subprocess.run([native, "--version"], capture_output=True, text=True, check=False).stdout
        if f"Version: {SOLC_VERSION}+" in out:
            return Path(native)
    shim = REPO_ROOT / "deploy" / "solcjs_shim.js"
    if not (NODE_MODULES / "solc" / "package.json").exists():
        raise ToolchainError(f"npm package solc {SOLC_VERSION} not installed; run `npm ci` (or `make setup`)")
    return shim
