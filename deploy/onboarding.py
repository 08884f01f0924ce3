"""`dvp-relayer onboard-escrow`: what an issuer must do so that the relayer's escrow may hold its token.

An ERC-3643 token moves units only to wallets its identity registry verifies, so the escrow — which holds the
seller's units between the lock and the claim — needs an ONCHAINID with the claims the token requires, registered
by one of the registry's agents. This module reads the token's registries and says, step by step, which calls are
still missing (with their calldata, to hand to the issuer's agent); with an agent key it sends the registration
itself. For this project's own allowlist tokens the one call is the owner's `setAllowed([escrow], true)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from adapters.compliance import ALLOWLIST, ERC3643, TransferRules, _call_data
from adapters.evm import EvmChain, TxSender


@dataclass
class Step:
    """One call still missing: who must send it, to which contract, with what calldata (empty: out of band)."""

    who: str
    what: str
    to: str = ""
    data: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class EscrowStatus:
    token: str
    standard: str
    escrow: str
    admitted: bool
    facts: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "standard": self.standard, "escrow": self.escrow, "admitted": self.admitted,
                "facts": self.facts, "steps": [s.to_dict() for s in self.steps]}


async def _call(chain: EvmChain, to: str, signature: str, out: list[str], *args: Any) -> Any:
    raw = await chain.rpc("eth_call", [{"to": to, "data": _call_data(signature, *args)}, "latest"])
    values = abi_decode(out, bytes.fromhex(raw[2:]))
    return values[0] if len(values) == 1 else values


async def escrow_status(chain: EvmChain, token: str, escrow: str, identity: str = "",
                        country: int = 392) -> EscrowStatus:
    """Read the token and its registries; list what is missing for `escrow` to hold it."""
    token, escrow = to_checksum_address(token), to_checksum_address(escrow)
    rules = await TransferRules(chain).rules(token)
    if rules.standard == ALLOWLIST:
        allowed = bool(await _call(chain, token, "isAllowed(address)", ["bool"], escrow))
        steps = [] if allowed else [Step("the token's owner", "allowlist the escrow", token,
                                         _call_data("setAllowed(address[],bool)", [escrow], True))]
        return EscrowStatus(token, rules.standard, escrow, allowed, {"allowlisted": allowed}, steps)
    if rules.standard != ERC3643:
        return EscrowStatus(token, rules.standard, escrow, True,
                            {"note": "a plain ERC-20: no holder rules the relayer can read"})
    registry = rules.identity_registry
    verified = bool(await _call(chain, registry, "isVerified(address)", ["bool"], escrow))
    stored = to_checksum_address(await _call(chain, registry, "identity(address)", ["address"], escrow))
    topics_registry = to_checksum_address(await _call(chain, registry, "topicsRegistry()", ["address"]))
    issuers_registry = to_checksum_address(await _call(chain, registry, "issuersRegistry()", ["address"]))
    topics = list(await _call(chain, topics_registry, "getClaimTopics()", ["uint256[]"]))
    issuers = {int(t): [to_checksum_address(a) for a in await _call(
        chain, issuers_registry, "getTrustedIssuersForClaimTopic(uint256)", ["address[]"], t)] for t in topics}
    facts = {"identity_registry": registry, "compliance": rules.compliance, "verified": verified,
             "registered_identity": stored if int(stored, 16) else "", "required_claim_topics": topics,
             "trusted_issuers_by_topic": issuers}
    steps: list[Step] = []
    if not verified:
        onchain_id = stored if int(stored, 16) else identity
        if not onchain_id:
            steps.append(Step("the issuer or its KYC provider",
                              "deploy an ONCHAINID for the escrow (e.g. IdFactory.createIdentity(escrow, salt)); "
                              "run this command again with --identity <its address>"))
        for topic in topics:
            steps.append(Step(f"a trusted issuer of topic {topic} ({', '.join(issuers[topic]) or 'none set'})",
                              f"sign a claim of topic {topic} about the escrow's identity and add it there "
                              "(Identity.addClaim, by a key with the CLAIM purpose on that identity)",
                              onchain_id or ""))
        if onchain_id and not int(stored, 16):
            steps.append(Step("an agent of the identity registry", "register the escrow's identity", registry,
                              _call_data("registerIdentity(address,address,uint16)", escrow,
                                         to_checksum_address(onchain_id), country)))
    return EscrowStatus(token, rules.standard, escrow, verified, facts, steps)


async def send_registration(chain: EvmChain, agent: LocalAccount, status: EscrowStatus) -> str | None:
    """Send the registry step (the one an agent key can make alone); returns its transaction hash."""
    step = next((s for s in status.steps if s.what == "register the escrow's identity"), None)
    if step is None:
        return None
    receipt = await TxSender(chain, agent).transact(step.to, step.data)
    return str(receipt["transactionHash"].hex())
