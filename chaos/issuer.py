"""The issuer's agent acting on the chaos run's ERC-3643 ST at random moments, each action undone after a hold.

An action lands at whatever step the trades in flight are at: before a lock (the lock cannot go through, the trade
aborts), between the locks and the reveal (the relayer withholds the secret, both legs refund), or after the reveal
(the buyer's ST claim fails until the action is lifted: the one case the relayer cannot prevent, docs/failure-modes.md).
Each action is an interval on the run's timeline (chaos.timeline.Outage "st issuer") so that the checker can tell
a ONE-SIDED trade the issuer caused from a violation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.errors import TransactionReverted
from adapters.evm import EvmChain, TxSender
from deploy import trex

ACTIONS = ("pause", "freeze_buyer", "freeze_escrow", "delete_buyer_identity", "force_out_of_escrow")
AGENT_TIP = 100 * 10**9  # the agent's calls are mined ahead of the relayer's pending ones


class IssuerAgent:
    """One action at a time on a T-REX token: `act` does it and returns the call that undoes it."""

    def __init__(self, chain: EvmChain, agent: Any, suite: trex.TrexSuite, escrow: str, seller: str,
                 buyer: str) -> None:
        self.chain, self.suite, self.escrow, self.seller, self.buyer = chain, suite, escrow, seller, buyer
        self.tx = TxSender(chain, agent, priority_fee_wei=AGENT_TIP, rebroadcast_after=1.0)
        self.reverted = 0  # calls the token refused (reported by the run)

    async def _call(self, to: str, data: str, patience: float = 120.0) -> None:
        """Sent until mined: the ST chain may be stopped or reorged meanwhile, and an undo must not be lost. A
        revert (at the estimate) means it is in effect already (a retry after the first one was mined after all)."""
        limit = time.monotonic() + patience
        while True:
            try:
                await self.tx.transact(to, data, timeout=30)
                return
            except TransactionReverted:
                self.reverted += 1
                return
            except Exception:  # noqa: BLE001 - chain down, reorged away: send again until the time is up
                if time.monotonic() > limit:
                    raise
                await asyncio.sleep(1.0)

    async def _token(self, fn: str, *args: Any) -> None:
        await self._call(self.suite.token, trex.call_data("Token", fn, *args))

    async def _registry(self, fn: str, *args: Any) -> None:
        await self._call(self.suite.identity_registry, trex.call_data("IdentityRegistry", fn, *args))

    async def _balance(self, holder: str) -> int:
        raw = await self.chain.rpc("eth_call", [{"to": self.suite.token,
                                                 "data": trex.call_data("Token", "balanceOf", holder)}, "latest"])
        return int(raw, 16)

    async def _read(self, to: str, contract: str, fn: str, *args: Any) -> int:
        raw = await self.chain.rpc("eth_call", [{"to": to, "data": trex.call_data(contract, fn, *args)}, "latest"])
        return int(raw, 16)

    async def _until(self, call: Callable[[], Awaitable[None]], lifted: Callable[[], Awaitable[bool]],
                     patience: float = 120.0) -> None:
        """Undo, then read that it holds: a reorg can take the undo out again, or bring the action back after it
        (the agent's own transaction sent again), and the run must not end with the token still blocked."""
        limit = time.monotonic() + patience
        while True:
            await call()
            await asyncio.sleep(2.0)
            try:
                if await lifted():
                    return
            except Exception:  # noqa: BLE001 - the chain may be down for a moment: look again
                pass
            if time.monotonic() > limit:
                raise TimeoutError("the issuer action could not be undone")

    async def act(self, action: str, rng: random.Random) -> Callable[[], Awaitable[None]]:
        token, registry = self.suite.token, self.suite.identity_registry
        if action == "pause":
            await self._token("pause")
            return lambda: self._until(lambda: self._token("unpause"),
                                       lambda: _false(self._read(token, "Token", "paused")))
        if action in ("freeze_buyer", "freeze_escrow"):
            who = self.buyer if action == "freeze_buyer" else self.escrow
            await self._token("setAddressFrozen", who, True)
            return lambda: self._until(lambda: self._token("setAddressFrozen", who, False),
                                       lambda: _false(self._read(token, "Token", "isFrozen", who)))
        if action == "delete_buyer_identity":
            identity = self.suite.identities[self.buyer]
            await self._registry("deleteIdentity", self.buyer)
            return lambda: self._until(lambda: self._registry("registerIdentity", self.buyer, identity, trex.JAPAN),
                                       lambda: _true(self._read(registry, "IdentityRegistry", "contains",
                                                                self.buyer)))
        if action == "force_out_of_escrow":
            # part of what the escrow holds goes to the seller (a verified wallet that holds far more than any
            # lock, so the way back is always covered)
            amount = int(await self._balance(self.escrow) * rng.uniform(0.3, 1.0))
            if amount == 0:
                return _nothing
            await self._token("forcedTransfer", self.escrow, self.seller, amount)
            return lambda: self._token("forcedTransfer", self.seller, self.escrow, amount)
        raise ValueError(f"unknown issuer action {action!r}")


    async def lift_all(self) -> list[str]:
        """At the end of a run: whatever is still in force (an action a reorg brought back) is undone. Returns
        what had to be lifted."""
        token, registry = self.suite.token, self.suite.identity_registry
        lifted = []
        if await self._read(token, "Token", "paused"):
            lifted.append("pause")
            await self._until(lambda: self._token("unpause"), lambda: _false(self._read(token, "Token", "paused")))
        for who, name in ((self.buyer, "freeze_buyer"), (self.escrow, "freeze_escrow")):
            if await self._read(token, "Token", "isFrozen", who):
                lifted.append(name)
                await self._until(lambda who=who: self._token("setAddressFrozen", who, False),
                                  lambda who=who: _false(self._read(token, "Token", "isFrozen", who)))
        if not await self._read(registry, "IdentityRegistry", "contains", self.buyer):
            lifted.append("delete_buyer_identity")
            identity = self.suite.identities[self.buyer]
            await self._until(lambda: self._registry("registerIdentity", self.buyer, identity, trex.JAPAN),
                              lambda: _true(self._read(registry, "IdentityRegistry", "contains", self.buyer)))
        return lifted


async def _false(read: Awaitable[int]) -> bool:
    return await read == 0


async def _true(read: Awaitable[int]) -> bool:
    return await read != 0


async def _nothing() -> None:
    return None
