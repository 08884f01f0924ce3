"""Test helpers on a real anvil: accounts, deployment, calls, expected reverts and time travel."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from adapters.contracts import abi, encode_call
from adapters.errors import TransactionReverted
from adapters.evm import EvmChain, TxSender
from deploy.deployer import deploy
from deploy.processes import DEV_MNEMONIC

Account.enable_unaudited_hdwallet_features()


def dev_accounts(n: int = 10) -> list[LocalAccount]:
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)]


def new_secret() -> tuple[bytes, bytes]:
    s = os.urandom(32)
    return s, hashlib.sha256(s).digest()


@dataclass
class Kit:
    chain: EvmChain
    accounts: list[LocalAccount]
    senders: dict[str, TxSender] = field(default_factory=dict)

    def sender(self, acct: LocalAccount) -> TxSender:
        if acct.address not in self.senders:
            self.senders[acct.address] = TxSender(self.chain, acct)
        return self.senders[acct.address]

    async def deploy(self, acct: LocalAccount, name: str, *args: Any) -> str:
        return await deploy(self.sender(acct), name, *args)

    async def tx(self, acct: LocalAccount, name: str, addr: str, fn: str, *args: Any, gas: int | None = None):
        return await self.sender(acct).transact(addr, encode_call(name, fn, *args), gas=gas)

    async def reverts(self, acct: LocalAccount, name: str, addr: str, fn: str, *args: Any) -> str:
        """Assert the call reverts; return the decoded custom error (e.g. 'SwapExpired(...)')."""
        try:
            await self.sender(acct).estimate_gas(addr, encode_call(name, fn, *args))
        except TransactionReverted as exc:
            return exc.reason or ""
        raise AssertionError(f"{fn} did not revert")

    async def view(self, name: str, addr: str, fn: str, *args: Any) -> Any:
        c = self.chain.w3.eth.contract(address=addr, abi=abi(name))
        return await getattr(c.functions, fn)(*args).call()

    async def now(self) -> int:
        return await self.chain.now()

    async def warp(self, seconds: int) -> None:
        """Advance the chain clock and mine a block."""
        await self.chain.rpc("evm_increaseTime", [seconds])
        await self.chain.rpc("evm_mine", [])
