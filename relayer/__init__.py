"""dvp-relayer: settles a security-token leg and a stablecoin leg atomically with hash-time-locked transfers."""

import sys as _sys

import adapters as _adapters  # noqa: F401 - first: it picks the C keccak before anything hashes

# eth-account imports py_ecc, which raises Python's recursion limit to 100,000 for its own recursive maths (pairings
# we never use). With that limit, json.loads of a deeply nested body recurses in C until the stack overflows and the
# process dies with SIGSEGV instead of raising RecursionError. Import it first, once, and put the limit back.
try:
    import py_ecc as _py_ecc  # noqa: F401
except ImportError:  # pragma: no cover - eth-account without py_ecc
    pass
_sys.setrecursionlimit(min(_sys.getrecursionlimit(), 4_000))
