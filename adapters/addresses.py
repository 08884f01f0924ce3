"""EIP-55 checksummed addresses, computed once per address: the relayer sees the same few accounts, tokens and
escrows over and over, and a keccak each time was several percent of a busy worker's CPU."""

from __future__ import annotations

from functools import lru_cache

from eth_utils import to_checksum_address


@lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """`address` (any case, 0x-hex) in EIP-55 form; raises ValueError on anything that is not an address."""
    return to_checksum_address(address)
