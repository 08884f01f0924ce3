"""Ledger adapters: one module per ledger kind, one shared EVM core. They know nothing of trades or Redis."""

import importlib.util as _util
import os as _os

# keccak256 in C (safe-pysha3, eth-hash's "pysha3" backend) instead of pycryptodome's, which eth-hash picks first when
# both are installed: ~6x faster on the 32-200-byte inputs of every swap id, terms hash, EIP-712 digest, address
# checksum and transaction hash (`python scripts/keccak_speed.py`). Chosen on eth-hash's first call: set before it.
if _util.find_spec("sha3") is not None:
    _os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")
