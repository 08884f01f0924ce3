"""Microseconds per keccak256 of a 96-byte input (a swap id's preimage) with each eth-hash backend installed, through
eth_hash.auto and through eth_utils.keccak (which the relayer's hot paths no longer call). Run each backend in a
fresh process: eth-hash picks its backend once, on its first call."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, sys, timeit
from eth_hash.auto import keccak
from eth_utils import keccak as utils_keccak
data = os.urandom(96)
n = 100_000
assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
auto = min(timeit.repeat(lambda: keccak(data), number=n, repeat=3)) / n * 1e6
utils = min(timeit.repeat(lambda: utils_keccak(data), number=n, repeat=3)) / n * 1e6
print(f"{os.environ['ETH_HASH_BACKEND']:>13}: eth_hash.auto {auto:5.2f} us, eth_utils.keccak {utils:5.2f} us")
"""


def main() -> None:
    for backend in ("pycryptodome", "pysha3"):
        env = {**os.environ, "ETH_HASH_BACKEND": backend}
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
        print(done.stdout.strip() or f"{backend:>13}: not installed ({done.stderr.strip().splitlines()[-1]})")


if __name__ == "__main__":
    main()
