"""A dishonest counterparty's tools on a real anvil (the chaos run and the tests): fill a chain's blocks, watch for a secret.

`BlockFiller` keeps the mempool stocked with GasBurner calls of 15M gas each at a high tip, so every 30M-gas block
holds two of them and nothing that bids less gets in. Measured on anvil 1.7.1: its pool orders by maxFeePerGas, not
by the effective tip (a 100 gwei tip with a 102 gwei fee cap waited behind 50 gwei tips capped at 20,000 gwei), so
the filler caps its fee the way a wallet does (3 x base fee + tip) and keeps the pool shallow (two blocks' worth),
which gets each of its transactions mined before the rising base fee overtakes its cap. `SecretWatch` scans every
new block's transactions and the node's mempool for a byte string.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount

from adapters.contracts import encode_call
from adapters.evm import EvmChain

BURN_GAS = 15_000_000
GWEI = 10**9


class BlockFiller:
    """Two 15M-gas transactions per block at `tip_wei`, from `accounts`, until stopped (bounded by `max_txs`)."""

    def __init__(self, chain: EvmChain, burner: str, accounts: list[LocalAccount], tip_wei: int,
                 keep_pending: int = 4, max_txs: int = 400) -> None:
        self.chain, self.burner, self.accounts = chain, burner, accounts
        self.tip_wei, self.keep_pending, self.max_txs = tip_wei, keep_pending, max_txs
        self.sent = 0
        self._nonces: dict[str, int] = {}
        self._base = 0

    async def _send_one(self, acct: LocalAccount) -> None:
        if acct.address not in self._nonces:
            self._nonces[acct.address] = await self.chain.call(
                lambda w3: w3.eth.get_transaction_count(acct.address, "pending"))
        tx = {"chainId": self.chain.chain_id, "nonce": self._nonces[acct.address], "to": self.burner,
              "data": encode_call("GasBurner", "burn"), "gas": BURN_GAS, "value": 0, "type": 2,
              "maxFeePerGas": 3 * self._base + self.tip_wei, "maxPriorityFeePerGas": self.tip_wei}
        raw = acct.sign_transaction(tx).raw_transaction
        try:
            await self.chain.call(lambda w3: w3.eth.send_raw_transaction(raw))
        except Exception:
            del self._nonces[acct.address]  # read the pending count again: a failed send must leave no gap
            raise
        self._nonces[acct.address] += 1
        self.sent += 1

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set() and self.sent < self.max_txs:
            status = await self.chain.rpc("txpool_status", [])
            self._base = int((await self.chain.get_block("latest"))["baseFeePerGas"])
            pending = int(status["pending"], 16) if isinstance(status["pending"], str) else int(status["pending"])
            for _ in range(max(0, self.keep_pending - pending)):
                await self._send_one(self.accounts[turn % len(self.accounts)])
                turn += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass


@dataclass
class SecretWatch:
    """Every transaction input seen on `chains` (blocks from `from_blocks` on) and in their mempools."""

    chains: list[EvmChain]
    needle: bytes
    seen_in: list[str] = field(default_factory=list)
    _next: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        for chain in self.chains:
            self._next[chain.name] = await chain.block_number() + 1

    def _hit(self, tx: Any) -> bool:
        data = tx.get("input") or tx.get("data") or "0x"
        data = data.hex() if isinstance(data, (bytes, bytearray)) else str(data)
        return self.needle.hex() in data.removeprefix("0x").lower()

    async def check(self) -> None:
        for chain in self.chains:
            pool = await chain.rpc("txpool_content", [])
            for kind in ("pending", "queued"):
                for by_nonce in (pool.get(kind) or {}).values():
                    for tx in by_nonce.values():
                        if self._hit(tx):
                            self.seen_in.append(f"{chain.name} mempool")
            head = await chain.block_number()
            for n in range(self._next[chain.name], head + 1):
                block = await chain.call(lambda w3, n=n: w3.eth.get_block(n, full_transactions=True))
                for tx in block["transactions"]:
                    if self._hit(tx):
                        self.seen_in.append(f"{chain.name} block {n}")
            self._next[chain.name] = head + 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
