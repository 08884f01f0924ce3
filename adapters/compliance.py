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
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector

from adapters.addresses import checksum
from adapters.errors import RpcError
from adapters.evm import EvmChain

ERC3643, ALLOWLIST, ERC20 = "erc3643", "allowlist", "erc20"


def _call_data(signature: str, *args: Any) -> str:
    types = signature[signature.index("(") + 1:-1]
    encoded = abi_encode([t for t in types.split(",") if t], list(args)) if args else b""
    return "0x" + (function_signature_to_4byte_selector(signature) + encoded).hex()


@lru_cache(maxsize=65536)
def _read_data(signature: str, *args: str | int) -> str:
    """`_call_data` of a read, remembered: intake asks the same reads of the same holders again and again (one
    keccak and one ABI encoding each was a sixth of intake's CPU)."""
    return _call_data(signature, *args)


BATCH_CALLS = 500  # eth_calls per JSON-RPC batch request (geth and Besu refuse batches above ~1,000)


@lru_cache(maxsize=4096)
def _word(raw: str, kind: str = "uint256") -> Any:
    """One ABI word; raises ValueError / DecodingError on anything else (a hostile or broken token's answer).
    Remembered: answers are a few distinct words (true, false, a registry address, a balance)."""
    if not isinstance(raw, str) or not raw.startswith("0x") or len(raw) != 66:
        raise ValueError(f"not one ABI word: {str(raw)[:80]}")
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
        """The function's one-word answer; None when the call reverts (no such function) or answers something
        that is not one well-formed word. Any other node error (rate limit, timeout) is raised: a token's kind is
        never decided, and cached, from a failed read."""
        try:
            raw = await self._eth_call(to, data)
        except RpcError as exc:
            if not _is_revert(exc):
                raise
            return None
        if not isinstance(raw, str) or len(raw) != 66:
            return None
        try:
            return _word(raw, kind)
        except (DecodingError, ValueError):
            return None

    def known(self, token: str) -> str | None:
        """The token's kind if already read (rules() reads it), else None."""
        found = self._rules.get(checksum(token))
        return found.standard if found is not None else None

    async def rules(self, token: str) -> TokenRules:
        """The token's kind, read once from the chain (an unknown function reverts; that tells the kinds apart)."""
        token = checksum(token)
        if (known := self._rules.get(token)) is not None:
            return known
        async with self._lock:
            if (known := self._rules.get(token)) is not None:
                return known
            registry = await self._try_word(token, _call_data("identityRegistry()"), "address")
            compliance = await self._try_word(token, _call_data("compliance()"), "address")
            if registry and compliance and int(registry, 16) and int(compliance, 16):
                found = TokenRules(ERC3643, checksum(registry), checksum(compliance))
            elif await self._try_word(token, _call_data("isAllowed(address)", token), "bool") is not None:
                found = TokenRules(ALLOWLIST)
            else:
                found = TokenRules(ERC20)
            self._rules[token] = found
            return found

    async def refusals(self, transfers: list[Transfer], _reread: bool = True) -> list[str | None]:
        """For each transfer, None if the token would make it now, else why not (a short reason code with the
        address it concerns). Batched JSON-RPC requests of at most BATCH_CALLS calls; a chunk with a reverting
        read is asked again transfer by transfer, so one hostile token or holder refuses only its own transfers
        ("token_check_reverted"), and an answer that does not decode refuses only its own ("malformed_answer").
        Transfers out of one sender (an escrow's claims) are judged together: its unfrozen holding must cover
        all of them. Raises LedgerError only when the chain did not answer — "retry later"."""
        rules = [await self.rules(t.token) for t in transfers]
        out: list[str | None] = [None] * len(transfers)
        free: dict[int, int] = {}  # transfer index -> its sender's unfrozen units (ERC-3643, allowed so far)
        pending = [i for i, r in enumerate(rules) if _reads(r)]
        for start in range(0, len(pending), max(1, BATCH_CALLS // 9)):
            chunk = pending[start:start + max(1, BATCH_CALLS // 9)]
            try:
                answers = await self._answers([(transfers[i], rules[i]) for i in chunk])
            except RpcError as exc:
                if not _is_revert(exc):
                    raise
                answers = []
                for i in chunk:  # one by one: the reverting read refuses its own transfer only
                    try:
                        answers += await self._answers([(transfers[i], rules[i])])
                    except RpcError as one:
                        if not _is_revert(one):
                            raise
                        answers.append({"reverted": str(one)[:120]})
            for i, seen in zip(chunk, answers):
                out[i] = _judge_safely(transfers[i], rules[i], seen)
                if out[i] is None and rules[i].standard == ERC3643:
                    free[i] = int(_word(seen["balance"])) - int(_word(seen["frozen_units"]))
        _share_holdings(transfers, rules, out, free)
        stale = [i for i, r in enumerate(rules) if r.standard == ERC3643 and out[i] == "registry_changed"]
        for token in {transfers[i].token for i in stale}:
            self._rules.pop(checksum(token), None)  # the owner swapped registry or compliance
        if stale and _reread:
            again = await self.refusals([transfers[i] for i in stale], _reread=False)
            for i, reason in zip(stale, again):
                out[i] = reason
        return out

    async def _answers(self, items: list[tuple[Transfer, TokenRules]]) -> list[dict[str, Any]]:
        """Each item's reads by name. A read asked for several items (the same token's paused(), one holder's
        balance) is asked once: the calls of one batch see one block."""
        unique: dict[tuple[str, str], int] = {}  # (to, data) -> its place in the batch
        plans: list[list[tuple[str, int]]] = []
        for t, r in items:
            plans.append([(name, unique.setdefault(_read(name, t, r), len(unique))) for name in _reads(r)])
        answers = await self.chain.rpc_batch([("eth_call", [{"to": to, "data": data}, "latest"])
                                              for to, data in unique])
        return [{name: answers[at] for name, at in plan} for plan in plans]

    async def refusal(self, transfer: Transfer) -> str | None:
        return (await self.refusals([transfer]))[0]


def _is_revert(exc: RpcError) -> bool:
    """A call that reverted (the function is missing or refused), as opposed to a node that could not answer."""
    return exc.code == 3 or "revert" in str(exc).lower()


def _judge_safely(t: Transfer, r: TokenRules, seen: dict[str, Any]) -> str | None:
    if "reverted" in seen:
        return "token_check_reverted"
    try:
        return _judge(t, r, seen)
    except (DecodingError, ValueError, TypeError, KeyError):
        return "malformed_answer"


def _share_holdings(transfers: list[Transfer], rules: list[TokenRules], out: list[str | None],
                    free: dict[int, int]) -> None:
    """Several funded transfers out of one sender (an escrow's claims in one batch) need its unfrozen holding to
    cover their sum, not each amount alone; the later ones beyond it are refused."""
    left: dict[tuple[str, str], int] = {}
    for i, t in enumerate(transfers):
        if out[i] is not None or not t.funded or rules[i].standard != ERC3643 or i not in free:
            continue
        key = (checksum(t.token), checksum(t.sender))
        left.setdefault(key, free[i])
        if left[key] < t.amount:
            out[i] = f"insufficient_free_units:{t.sender}"
        else:
            left[key] -= t.amount


def _reads(r: TokenRules) -> list[str]:
    if r.standard == ERC3643:
        return ["paused", "frozen_sender", "frozen_receiver", "balance", "frozen_units", "verified", "can_transfer",
                "registry_now", "compliance_now"]
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
        "registry_now": (t.token, "identityRegistry()"),
        "compliance_now": (t.token, "compliance()"),
        "allowed_receiver": (t.token, "isAllowed(address)", t.receiver),
    }
    to, signature, *args = reads[name]
    return str(to), _read_data(str(signature), *args)


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
    if (checksum(_word(seen["registry_now"], "address")) != r.identity_registry
            or checksum(_word(seen["compliance_now"], "address")) != r.compliance):
        return "registry_changed"  # refusals() reads the token's kind again and asks once more
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
