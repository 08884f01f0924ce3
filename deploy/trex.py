"""An ERC-3643 (T-REX) suite on a devnet chain, from the reference implementation's published artifacts.

The compiled contracts come unmodified from npm (`@tokenysolutions/t-rex` 4.1.6 for the suite,
`@onchain-id/solidity` 2.2.1 for ONCHAINID identities and the claim issuer; both pinned in package.json). Nothing of
their source is in this repository (T-REX is GPL-3.0, this project Apache-2.0): the artifacts are read from
node_modules at deploy time only, and the relayer itself talks to the token through the ERC-3643 interface alone
(adapters/compliance.py).

The suite is deployed as T-REX's own tests do without the factory: each implementation deployed and initialised
directly (no TREX proxies), so the token, identity registry, storage, claim-topics and trusted-issuers registries and
the modular compliance behave exactly as the published code does. One claim issuer, managed by the issuer's key,
signs a KYC claim (topic 1) for every holder's ONCHAINID; the escrow is registered like any holder.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
import rlp
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3

from adapters.evm import EvmChain, TxSender
from deploy.toolchain import REPO_ROOT, ToolchainError

TREX = REPO_ROOT / "node_modules" / "@tokenysolutions" / "t-rex" / "artifacts" / "contracts"
ONCHAINID = REPO_ROOT / "node_modules" / "@onchain-id" / "solidity" / "artifacts" / "contracts"
ARTIFACT_FILES = {
    "Token": TREX / "token/Token.sol/Token.json",
    "IdentityRegistry": TREX / "registry/implementation/IdentityRegistry.sol/IdentityRegistry.json",
    "IdentityRegistryStorage": TREX / "registry/implementation/IdentityRegistryStorage.sol/IdentityRegistryStorage.json",
    "ClaimTopicsRegistry": TREX / "registry/implementation/ClaimTopicsRegistry.sol/ClaimTopicsRegistry.json",
    "TrustedIssuersRegistry": TREX / "registry/implementation/TrustedIssuersRegistry.sol/TrustedIssuersRegistry.json",
    "ModularCompliance": TREX / "compliance/modular/ModularCompliance.sol/ModularCompliance.json",
    "Identity": ONCHAINID / "Identity.sol/Identity.json",
    "ClaimIssuer": ONCHAINID / "ClaimIssuer.sol/ClaimIssuer.json",
}
KYC_TOPIC = 1  # the one claim topic the devnet's tokens require
CLAIM_SCHEME_ECDSA = 1
JAPAN = 392  # ISO 3166-1 numeric country code stored with each identity
ZERO = "0x" + "00" * 20


@cache
def artifact(name: str) -> dict[str, Any]:
    """ABI and creation bytecode of one published T-REX / ONCHAINID contract."""
    path: Path = ARTIFACT_FILES[name]
    if not path.exists():
        raise ToolchainError(f"{path} is missing: run `make setup` (npm ci installs @tokenysolutions/t-rex)")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _contract(name: str) -> Any:
    art = artifact(name)
    return AsyncWeb3().eth.contract(abi=art["abi"], bytecode=art["bytecode"])


def call_data(name: str, fn: str, *args: Any) -> str:
    """Calldata of `fn(args)` on the published contract `name`."""
    return str(_contract(name).encode_abi(fn, args=list(args)))


@dataclass
class TrexSuite:
    """The addresses of one token's T-REX suite (deployment.json's "trex" entry of a chain)."""

    token: str
    identity_registry: str
    identity_registry_storage: str
    claim_topics_registry: str
    trusted_issuers_registry: str
    compliance: str
    claim_issuer: str
    identities: dict[str, str]  # holder wallet -> its ONCHAINID

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CALL_GAS = 1_000_000  # calls into contracts mined in the same pipeline cannot be estimated beforehand


class _Pipeline:
    """Many transactions of one account sent back to back (consecutive nonces, CREATE addresses known before
    mining), then waited for together: a suite takes a few blocks, not one block per transaction."""

    def __init__(self, chain: EvmChain, account: LocalAccount) -> None:
        self.chain = chain
        self.tx = TxSender(chain, account)
        self.address = account.address
        self.nonce: int | None = None
        self.sent: list[Any] = []
        self.expected: dict[int, str] = {}  # index in `sent` -> the CREATE address computed for it

    async def _next_nonce(self) -> int:
        if self.nonce is None:
            self.nonce = int(await self.chain.call(lambda w3: w3.eth.get_transaction_count(self.address, "pending")))
        return self.nonce + len(self.sent)

    async def deploy(self, name: str, *ctor_args: Any) -> str:
        nonce = await self._next_nonce()
        data = _contract(name).constructor(*ctor_args).data_in_transaction
        sent = await self.tx.send(None, data)  # a constructor depends on nothing: estimated
        if sent.nonce != nonce:
            raise RuntimeError(f"{name}: sent with nonce {sent.nonce}, expected {nonce} (another sender of this key?)")
        self.sent.append(sent)
        address = to_checksum_address(keccak(rlp.encode([bytes.fromhex(self.address[2:]), nonce]))[12:])
        self.expected[len(self.sent) - 1] = address
        return address

    async def call(self, to: str, data: str, gas: int = CALL_GAS) -> None:
        await self._next_nonce()
        self.sent.append(await self.tx.send(to, data, gas=gas))

    async def done(self) -> None:
        """Every transaction mined and successful (TransactionReverted otherwise)."""
        receipts = await asyncio.gather(*(self.tx.wait(s) for s in self.sent))
        for i, address in self.expected.items():
            if to_checksum_address(str(receipts[i]["contractAddress"])) != address:
                raise RuntimeError(f"deployed at {receipts[i]['contractAddress']}, expected {address}")
        self.sent, self.nonce, self.expected = [], None, {}


async def deploy_suite(chain: EvmChain, issuer: LocalAccount, *, name: str, symbol: str,
                       decimals: int = 0) -> TrexSuite:
    """A T-REX token with its registries and an empty modular compliance; the issuer is owner and agent, the
    token unpaused (T-REX tokens start paused)."""
    p = _Pipeline(chain, issuer)
    ctr = await p.deploy("ClaimTopicsRegistry")
    tir = await p.deploy("TrustedIssuersRegistry")
    irs = await p.deploy("IdentityRegistryStorage")
    ir = await p.deploy("IdentityRegistry")
    mc = await p.deploy("ModularCompliance")
    token = await p.deploy("Token")
    claim_issuer = await p.deploy("ClaimIssuer", issuer.address)
    for to, data in [
        (ctr, call_data("ClaimTopicsRegistry", "init")),
        (tir, call_data("TrustedIssuersRegistry", "init")),
        (irs, call_data("IdentityRegistryStorage", "init")),
        (ir, call_data("IdentityRegistry", "init", tir, ctr, irs)),
        (irs, call_data("IdentityRegistryStorage", "bindIdentityRegistry", ir)),
        (mc, call_data("ModularCompliance", "init")),
        (token, call_data("Token", "init", ir, mc, name, symbol, decimals, ZERO)),
        (ir, call_data("IdentityRegistry", "addAgent", issuer.address)),
        (token, call_data("Token", "addAgent", issuer.address)),
        (ctr, call_data("ClaimTopicsRegistry", "addClaimTopic", KYC_TOPIC)),
        (tir, call_data("TrustedIssuersRegistry", "addTrustedIssuer", claim_issuer, [KYC_TOPIC])),
        (token, call_data("Token", "unpause")),
    ]:
        await p.call(to, data)
    await p.done()
    return TrexSuite(token, ir, irs, ctr, tir, mc, claim_issuer, {})


def kyc_claim(issuer: LocalAccount, identity: str, data: bytes = b"KYC passed") -> tuple[bytes, bytes]:
    """(signature, data) of a KYC claim the claim issuer's key signs for `identity`, as ONCHAINID checks it:
    eth_sign of keccak256(abi.encode(identity, topic, data))."""
    digest = keccak(abi_encode(["address", "uint256", "bytes"], [identity, KYC_TOPIC, data]))
    signed = issuer.sign_message(encode_defunct(primitive=digest))
    return bytes(signed.signature), data


async def register(chain: EvmChain, issuer: LocalAccount, suite: TrexSuite, *wallets: str,
                   country: int = JAPAN) -> list[str]:
    """Give each wallet an ONCHAINID (managed by the issuer's key, as a custodial KYC provider does), a KYC claim
    from the suite's claim issuer, and register it in the identity registry. Returns the identities."""
    p = _Pipeline(chain, issuer)
    identities = []
    for wallet in wallets:
        identity = await p.deploy("Identity", issuer.address, False)
        signature, data = kyc_claim(issuer, identity)
        await p.call(identity, call_data("Identity", "addClaim", KYC_TOPIC, CLAIM_SCHEME_ECDSA, suite.claim_issuer,
                                         signature, data, ""))
        await p.call(suite.identity_registry, call_data("IdentityRegistry", "registerIdentity", wallet, identity,
                                                        country))
        suite.identities[wallet] = identity
        identities.append(identity)
    await p.done()
    return identities


async def agent_call(chain: EvmChain, agent: LocalAccount, suite: TrexSuite, fn: str, *args: Any) -> None:
    """One call of the token's agent or owner (mint, pause, setAddressFrozen, forcedTransfer, ...)."""
    await TxSender(chain, agent).transact(suite.token, call_data("Token", fn, *args))
