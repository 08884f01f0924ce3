"""The trade instruction a PTS signs (EIP-712) and the relayer verifies before accepting a trade.

The EIP-712 domain and types are documented in docs/trade-instruction.md so any standard signer
(ethers.js signTypedData, eth-account sign_typed_data) can produce one. The domain carries a `salt` that each
deployment configures (DVP_PTS_DOMAIN_SALT): an instruction signed for one venue or environment (a test PTS,
another relayer deployment) does not verify at any other.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from decimal import Decimal
from typing import Annotated, Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_hash.auto import keccak as keccak256
from eth_utils import is_checksum_address, keccak, to_checksum_address
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relayer.errors import InvalidInstruction

UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1

EIP712_DOMAIN_NAME, EIP712_DOMAIN_VERSION = "DvP Trade Instruction", "2"
EIP712_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "salt", "type": "bytes32"}],
    "TradeInstruction": [
        {"name": "tradeId", "type": "bytes32"},
        {"name": "stChainId", "type": "uint256"},
        {"name": "stToken", "type": "address"},
        {"name": "stAmount", "type": "uint256"},
        {"name": "scChainId", "type": "uint256"},
        {"name": "scToken", "type": "address"},
        {"name": "scAmount", "type": "uint256"},
        {"name": "sellerStAccount", "type": "address"},
        {"name": "sellerScAccount", "type": "address"},
        {"name": "buyerScAccount", "type": "address"},
        {"name": "buyerStAccount", "type": "address"},
        {"name": "deadline", "type": "uint64"},
    ],
}


@lru_cache(maxsize=4096)
def _checksummed(v: str) -> bool:
    """EIP-55 check, remembered: a firm's instructions name the same few accounts and tokens over and over (a
    keccak per address was 3% of a busy worker's CPU)."""
    return bool(is_checksum_address(v))


def _address(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("0x") or len(v) != 42:
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    if not _checksummed(v):
        if v[2:] == v[2:].lower() or v[2:] == v[2:].upper():
            raise ValueError("address must be EIP-55 checksummed")
        raise ValueError("address has a bad EIP-55 checksum")
    return v


# An EIP-55 checksummed address; the OpenAPI document names the format so a fuzzer can generate valid ones.
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="EIP-55 checksummed address",
                               json_schema_extra={"format": "eip55-address"})]


class TradeInstruction(BaseModel):
    """A matched trade: seller delivers `stAmount` of `stToken`, buyer pays `scAmount` of `scToken`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    tradeId: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="32-byte trade id, 0x-hex")
    stChainId: int = Field(gt=0, le=UINT256_MAX)
    stToken: Address
    stAmount: int = Field(gt=0, le=UINT256_MAX)
    scChainId: int = Field(gt=0, le=UINT256_MAX)
    scToken: Address
    scAmount: int = Field(gt=0, le=UINT256_MAX)
    sellerStAccount: Address
    sellerScAccount: Address
    buyerScAccount: Address
    buyerStAccount: Address
    deadline: int = Field(gt=0, le=UINT64_MAX, description="unix seconds by which the trade must be settled")

    _addr = field_validator(
        "stToken", "scToken", "sellerStAccount", "sellerScAccount", "buyerScAccount", "buyerStAccount"
    )(_address)

    @field_validator("stChainId", "stAmount", "scChainId", "scAmount", "deadline", mode="before")
    @classmethod
    def _exact_integer(cls, v: Any) -> Any:
        """JSON allows an integer written as 63366.0; the API parses JSON numbers with a fraction as Decimal, so
        an integral one becomes the exact int. A float (inexact beyond 2**53) is still refused."""
        if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
            return int(v)
        return v

    @field_validator("tradeId")
    @classmethod
    def _lower_id(cls, v: str) -> str:
        return v.lower()

    @property
    def trade_id_bytes(self) -> bytes:
        return bytes.fromhex(self.tradeId[2:])

    def typed_data(self, salt: bytes) -> dict[str, Any]:
        """The full EIP-712 message for the deployment whose domain salt is `salt`, ready for eth-account."""
        message = self.model_dump()
        message["tradeId"] = self.trade_id_bytes
        return {"types": EIP712_TYPES, "primaryType": "TradeInstruction", "domain": eip712_domain(salt),
                "message": message}

    def digest(self) -> str:
        """A stable hash of the terms, to tell a replay (same terms) from a conflict (same id, other terms)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def _type_string(name: str) -> str:
    fields = ",".join(f"{f['type']} {f['name']}" for f in EIP712_TYPES[name])
    return f"{name}({fields})"


_FIELDS = [(f["name"], f["type"]) for f in EIP712_TYPES["TradeInstruction"]]
_TYPE_HASH = keccak(text=_type_string("TradeInstruction"))


@lru_cache(maxsize=16)
def _domain_separator(salt: bytes) -> bytes:
    """hashStruct(EIP712Domain) of one deployment: the same for every instruction it verifies."""
    eip712_domain(salt)  # checks the salt's length
    return keccak(abi_encode(["bytes32"] * 4, [keccak(text=_type_string("EIP712Domain")),
                                              keccak(text=EIP712_DOMAIN_NAME), keccak(text=EIP712_DOMAIN_VERSION),
                                              salt]))


def signing_digest(instruction: TradeInstruction, salt: bytes) -> bytes:
    """The EIP-712 digest keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(instruction)). Every field is atomic
    and static, so encodeData is their ABI encoding; the domain part is computed once per salt. The same bytes
    eth-account's encode_typed_data hashes (test_protocol checks both), at a fraction of its cost: it parses the
    whole typed-data document for every instruction."""
    values = [instruction.trade_id_bytes if name == "tradeId" else getattr(instruction, name) for name, _ in _FIELDS]
    struct = keccak256(abi_encode(["bytes32"] + [kind for _, kind in _FIELDS], [_TYPE_HASH, *values]))
    return keccak256(b"\x19\x01" + _domain_separator(salt) + struct)


class SignedInstruction(BaseModel):
    """What a PTS posts: the instruction and its EIP-712 signature (65 bytes, 0x-hex)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    instruction: TradeInstruction
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$")

    def signer(self, salt: bytes) -> str:
        """The address that signed for the deployment whose domain salt is `salt` (another salt recovers another
        address, which no relayer trusts)."""
        try:
            digest = signing_digest(self.instruction, salt)
            # eth-account's own recovery of a message hash (signature checks and all), minus the typed-data parse
            return to_checksum_address(Account._recover_hash(digest, signature=self.signature))
        except Exception as exc:  # noqa: BLE001 - any recovery failure is a bad signature
            # unauthenticated input, like a signature from an untrusted key: 403
            raise InvalidInstruction(f"signature cannot be recovered: {exc}", code="bad_signature") from exc


def eip712_domain(salt: bytes) -> dict[str, Any]:
    """The instruction domain of one deployment."""
    if len(salt) != 32:
        raise ValueError("the EIP-712 domain salt is 32 bytes")
    return {"name": EIP712_DOMAIN_NAME, "version": EIP712_DOMAIN_VERSION, "salt": salt}


def sign_instruction(instruction: TradeInstruction, private_key: bytes | str, salt: bytes) -> SignedInstruction:
    """Sign as a PTS would (used by the demo and tests; a real PTS signs with its own tooling)."""
    signed = Account.sign_typed_data(private_key, full_message=instruction.typed_data(salt))
    return SignedInstruction(instruction=instruction, signature="0x" + bytes(signed.signature).hex())


def validated(model: Any, doc: Any) -> Any:
    """`model` validated from a decoded JSON document; InvalidInstruction (invalid_field) naming the first bad field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInstruction(f"{where}: {first['msg']}", code="invalid_field") from exc


def parse_signed(doc: Any) -> SignedInstruction:
    """Validate a decoded JSON document; raises InvalidInstruction with a field-level message."""
    signed: SignedInstruction = validated(SignedInstruction, doc)
    return signed
