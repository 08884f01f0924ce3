"""Would this token move these units right now? The token's own read-only checks, asked over eth_call.

The relayer asks twice per trade and leg: at intake (so a trade the token would refuse is refused before anything
is locked) and, for the ST leg, just before it reveals the secret with the SC claim (so it never reveals while the
buyer's ST claim would fail). Three kinds of token are told apart once per token address and cached:

- ``erc3643``: a T-REX / ERC-3643 token. A transfer from `sender` to `receiver` needs the token unpaused, neither
  wallet frozen, enough unfrozen units at the sender (for an escrow: its whole holding, which an agent's forced
  transfer may have cut), the receiver verified by the token's identity registry and
  the modular compliance's ``canTransfer(sender, receiver, amount)``;
- ``allowlist``: this project's PermissionedToken (SecurityToken, Stablecoin): unpaused, both on ``isAllowed``;
- ``erc20``: anything else; no rule the relayer can read, so never refused here.

Only read-only calls are made: nothing the node sees carries the secret (a simulated claim would; see
docs/failure-modes.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from adapters.errors import RpcError
from adapters.evm import EvmChain

ERC3643, ALLOWLIST, ERC20 = "erc3643", "allowlist", "erc20"


def _call_data(signature: str, *args: Any) -> str:
    types = signature[signature.index("(") + 1:-1]
    encoded = abi_encode([t for t in types.split(",") if t], list(args)) if args else b""
    return "0x" + (function_signature_to_4byte_selector(signature) + encoded).hex()


def _word(raw: str, kind: str = "uint256") -> Any:
    return abi_decode([kind], bytes.fromhex(raw[2:]))[0]


@dataclass(frozen=True)
class Transfer:
    """One movement an escrow will make: `sender` -> `receiver` of `amount` units of `token`."""

    token: str
    sender: str
    receiver: str
    amount: int
    funded: bool = True  # False: the sender does not hold the units yet (an escrow before the lock): no balance check


@dataclass(frozen=True)
class TokenRules:
    """What a token is, and for ERC-3643 where its identity registry and compliance live."""

    standard: str
    identity_registry: str = ""
    compliance: str = ""


class TransferRules:
    """Reads one chain's tokens' transfer rules; see the module docstring."""

    def __init__(self, chain: EvmChain) -> None:
        self.chain = chain
        self._rules: dict[str, TokenRules] = {}
        self._lock = asyncio.Lock()

    async def _eth_call(self, to: str, data: str) -> str:
        result: str = await self.chain.rpc("eth_call", [{"to": to, "data": data}, "latest"])
        return result

    async def _try_word(self, to: str, data: str, kind: str) -> Any:
        try:
            raw = await self._eth_call(to, data)
        except RpcError:  # reverted: the token has no such function
            return None
        if not isinstance(raw, str) or len(raw) != 66:
            return None
        return _word(raw, kind)

    def known(self, token: str) -> str | None:
        """The token's kind if already read (rules() reads it), else None."""
        found = self._rules.get(to_checksum_address(token))
        return found.standard if found is not None else None

    async def rules(self, token: str) -> TokenRules:
        """The token's kind, read once from the chain (an unknown function reverts; that tells the kinds apart)."""
        token = to_checksum_address(token)
        if (known := self._rules.get(token)) is not None:
            return known
        async with self._lock:
            if (known := self._rules.get(token)) is not None:
                return known
            registry = await self._try_word(token, _call_data("identityRegistry()"), "address")
            compliance = await self._try_word(token, _call_data("compliance()"), "address")
            if registry and compliance and int(registry, 16) and int(compliance, 16):
                found = TokenRules(ERC3643, to_checksum_address(registry), to_checksum_address(compliance))
            elif await self._try_word(token, _call_data("isAllowed(address)", token), "bool") is not None:
                found = TokenRules(ALLOWLIST)
            else:
                found = TokenRules(ERC20)
            self._rules[token] = found
            return found

    async def refusals(self, transfers: list[Transfer]) -> list[str | None]:
        """For each transfer, None if the token would make it now, else why not (a short reason code with the
        address it concerns). One batched JSON-RPC request for all of them. Raises LedgerError (the chain did not
        answer) — the caller decides whether that means "retry later"."""
        rules = [await self.rules(t.token) for t in transfers]
        calls: list[tuple[str, list[Any]]] = []
        plans: list[list[str]] = []
        for t, r in zip(transfers, rules):
            names = _reads(r)
            plans.append(names)
            calls += [("eth_call", [{"to": to, "data": data}, "latest"]) for to, data in
                      (_read(name, t, r) for name in names)]
        answers = iter(await self.chain.rpc_batch(calls)) if calls else iter(())
        out: list[str | None] = []
        for t, r, names in zip(transfers, rules, plans):
            seen = {name: next(answers) for name in names}
            out.append(_judge(t, r, seen))
        return out

    async def refusal(self, transfer: Transfer) -> str | None:
        return (await self.refusals([transfer]))[0]


def _reads(r: TokenRules) -> list[str]:
    if r.standard == ERC3643:
        return ["paused", "frozen_sender", "frozen_receiver", "balance", "frozen_units", "verified", "can_transfer"]
    if r.standard == ALLOWLIST:
        return ["paused", "allowed_sender", "allowed_receiver"]
    return []


def _read(name: str, t: Transfer, r: TokenRules) -> tuple[str, str]:
    reads = {
        "paused": (t.token, "paused()"),
        "frozen_sender": (t.token, "isFrozen(address)", t.sender),
        "frozen_receiver": (t.token, "isFrozen(address)", t.receiver),
        "balance": (t.token, "balanceOf(address)", t.sender),
        "frozen_units": (t.token, "getFrozenTokens(address)", t.sender),
        "verified": (r.identity_registry, "isVerified(address)", t.receiver),
        "can_transfer": (r.compliance, "canTransfer(address,address,uint256)", t.sender, t.receiver, t.amount),
        "allowed_sender": (t.token, "isAllowed(address)", t.sender),
        "allowed_receiver": (t.token, "isAllowed(address)", t.receiver),
    }
    to, signature, *args = reads[name]
    return str(to), _call_data(str(signature), *args)


def _judge(t: Transfer, r: TokenRules, seen: dict[str, str]) -> str | None:
    def flag(name: str) -> bool:
        return bool(_word(seen[name], "bool"))

    if not seen:
        return None
    if flag("paused"):
        return "token_paused"
    if r.standard == ALLOWLIST:
        for who, name in ((t.sender, "allowed_sender"), (t.receiver, "allowed_receiver")):
            if not flag(name):
                return f"not_allowed:{who}"
        return None
    for who, name in ((t.sender, "frozen_sender"), (t.receiver, "frozen_receiver")):
        if flag(name):
            return f"wallet_frozen:{who}"
    if t.funded and int(_word(seen["balance"])) - int(_word(seen["frozen_units"])) < t.amount:
        return f"insufficient_free_units:{t.sender}"  # too few units, or some frozen (or forced out of an escrow)
    if not flag("verified"):
        return f"not_verified:{t.receiver}"
    if not flag("can_transfer"):
        return "compliance_can_transfer_false"
    return None
