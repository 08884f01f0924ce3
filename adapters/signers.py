"""Who signs: one interface behind every transaction and every EIP-712 signature the relayer makes.

A firm keeps its keys in an HSM or a wallet file, not in an environment variable. Every signer here answers the
same three things eth-account's LocalAccount answers (`address`, `sign_transaction`, `sign_typed_data`), so the
transaction sender and the ledgers never know where the key is:

- `pkcs11:` a secp256k1 key inside an HSM, reached through PKCS#11; it is generated or imported there and never
  leaves it. The HSM signs the 32-byte digest (CKM_ECDSA); the signature is normalised to low s (EIP-2) and its
  recovery id found by recovering the public key, since an HSM does not return one.
- `keystore:` an encrypted JSON keystore (Web3 Secret Storage, as eth-account writes it), the passphrase read
  from a file, never from the environment.
- `env:` a raw private key: for a devnet only (the worker warns when one is used on any other chain).

A reference names one account: `pkcs11:token=dvp;object=seller?pin-source=/etc/dvp/hsm.pin`,
`keystore:/etc/dvp/seller.json?passphrase-file=/etc/dvp/seller.pass`, `env:0x…` (`parse_reference`). Both the
sender and the EIP-712 paths go through `HashSigner._sign_hash`, so an HSM signer and a local one encode
transactions with the same (eth-account's) code.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

from eth_account import Account
from eth_account._utils.signing import sign_transaction_dict
from eth_account.datastructures import SignedMessage, SignedTransaction
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_keys.datatypes import PrivateKey, PublicKey, Signature
from eth_keys.exceptions import ValidationError as KeyValidationError
from eth_typing import ChecksumAddress
from eth_hash.auto import keccak as keccak256
from eth_utils import to_checksum_address
from hexbytes import HexBytes

from adapters.errors import LedgerError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"  # Debian's softhsm2; any PKCS#11 module path works
KINDS = ("pkcs11", "keystore", "env")


class SignerError(LedgerError):
    """Raised when a signer cannot be set up or cannot sign (bad reference, missing key, HSM refused)."""


class Signer(Protocol):
    """What the sender and the ledgers need of a key, wherever it is kept (LocalAccount satisfies it too)."""

    @property
    def address(self) -> ChecksumAddress: ...

    def sign_transaction(self, transaction_dict: Any) -> SignedTransaction: ...

    def sign_typed_data(self, *, full_message: dict[str, Any]) -> SignedMessage: ...


class _HashKey:
    """Adapter handed to eth-account's transaction encoder: it only ever calls `sign_msg_hash`."""

    def __init__(self, signer: HashSigner) -> None:
        self._signer = signer

    def sign_msg_hash(self, digest: bytes) -> Signature:
        return self._signer._sign_hash(digest)


class HashSigner:
    """Base of the signers: everything is built on one operation, signing a 32-byte digest."""

    kind = "hash"

    def __init__(self, address: str, reference: str) -> None:
        self._address = to_checksum_address(address)
        self.reference = reference  # safe to show: never holds a key, PIN or passphrase

    @property
    def address(self) -> ChecksumAddress:
        return self._address

    def _sign_hash(self, digest: bytes) -> Signature:
        raise NotImplementedError

    def sign_transaction(self, transaction_dict: Any) -> SignedTransaction:
        """Sign a transaction dict (legacy or typed) exactly as eth-account would with the key itself."""
        v, r, s, encoded = sign_transaction_dict(_HashKey(self), dict(transaction_dict))  # type: ignore[arg-type]
        return SignedTransaction(raw_transaction=HexBytes(encoded), hash=HexBytes(keccak256(encoded)), r=r, s=s, v=v)

    def sign_typed_data(self, *, full_message: dict[str, Any]) -> SignedMessage:
        """An EIP-712 signature (65 bytes r ‖ s ‖ v, v = 27/28), as eth-account's sign_typed_data gives."""
        digest = _hash_eip191_message(encode_typed_data(full_message=full_message))
        sig = self._sign_hash(digest)
        v = sig.v + 27
        raw = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([v])
        return SignedMessage(message_hash=HexBytes(digest), r=sig.r, s=sig.s, v=v, signature=HexBytes(raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address}, {self.reference})"


class LocalSigner(HashSigner):
    """A key held in this process's memory (from `env:` or a decrypted keystore)."""

    def __init__(self, key: PrivateKey, reference: str, kind: str) -> None:
        super().__init__(key.public_key.to_checksum_address(), reference)
        self._key = key
        self.kind = kind

    def _sign_hash(self, digest: bytes) -> Signature:
        return self._key.sign_msg_hash(digest)


def ethereum_signature(r: int, s: int, digest: bytes, public_key: PublicKey) -> Signature:
    """An ECDSA (r, s) from a device that gives no recovery id, as Ethereum wants it: s in the lower half of the
    curve order (EIP-2; the other half is the same signature mirrored) and the recovery id that gives back
    `public_key`. SignerError when neither does (the device signed something else, or with another key)."""
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignerError("the HSM returned an ECDSA signature out of range")
    if s > SECP256K1_N // 2:
        s = SECP256K1_N - s
    for recovery_id in (0, 1):
        candidate = Signature(vrs=(recovery_id, r, s))
        try:
            if candidate.recover_public_key_from_msg_hash(digest) == public_key:
                return candidate
        except Exception:  # eth-keys raises BadSignature and others for a point off the curve  # noqa: BLE001
            continue
    raise SignerError("the HSM's signature does not verify against the key's public key")


# --- PKCS#11 ---------------------------------------------------------------------------------------------------

_LIBS: dict[str, Any] = {}  # module path -> loaded pkcs11.lib (a module may be initialised once per process)
_LIBS_LOCK = threading.Lock()


def _pkcs11_lib(module: str) -> Any:
    import pkcs11  # imported here: a worker without HSM signers needs neither the package nor a module

    with _LIBS_LOCK:
        if module not in _LIBS:
            if not Path(module).exists():
                raise SignerError(f"PKCS#11 module {module} not found (Debian: apt-get install softhsm2, or your "
                                  "HSM vendor's module; set module-path= in the reference)")
            try:
                _LIBS[module] = pkcs11.lib(module)
            except Exception as exc:  # noqa: BLE001 - the module's own loader error, reported with its path
                raise SignerError(f"PKCS#11 module {module} could not be loaded: {type(exc).__name__}") from None
        return _LIBS[module]


@dataclass(frozen=True)
class Pkcs11Reference:
    """A PKCS#11 URI (RFC 7512) naming one key: `pkcs11:token=T;object=LABEL?pin-source=FILE&module-path=SO`."""

    token: str
    label: str
    pin_file: str
    module: str = DEFAULT_PKCS11_MODULE

    def uri(self) -> str:
        return f"pkcs11:token={self.token};object={self.label}?pin-source={self.pin_file}&module-path={self.module}"

    def read_pin(self) -> str:
        return _read_secret_file(self.pin_file, "PKCS#11 PIN (pin-source)")

    def open_session(self, *, rw: bool = False) -> Any:
        import pkcs11

        lib = _pkcs11_lib(self.module)
        try:
            token = lib.get_token(token_label=self.token)
        except pkcs11.NoSuchToken:
            raise SignerError(f"no PKCS#11 token labelled {self.token!r} in {self.module}") from None
        except pkcs11.MultipleTokensReturned:
            raise SignerError(f"several PKCS#11 tokens labelled {self.token!r}") from None
        try:
            return token.open(user_pin=self.read_pin(), rw=rw)
        except pkcs11.UserAlreadyLoggedIn:  # login is per token and process: a later session shares it
            return token.open(rw=rw)
        except pkcs11.PinIncorrect:
            raise SignerError(f"PKCS#11 token {self.token!r}: the PIN in {self.pin_file} is wrong") from None
        except pkcs11.PKCS11Error as exc:
            raise SignerError(f"PKCS#11 token {self.token!r}: login failed ({type(exc).__name__})") from None


def _ec_point_to_public_key(ec_point: bytes) -> PublicKey:
    """CKA_EC_POINT is a DER OCTET STRING around the uncompressed point 04 ‖ x ‖ y (SoftHSM, most HSMs)."""
    point = ec_point
    if len(point) == 67 and point[0] == 0x04 and point[1] == 0x41:
        point = point[2:]
    if len(point) != 65 or point[0] != 0x04:
        raise SignerError("the HSM key's public point is not an uncompressed secp256k1 point")
    return PublicKey(point[1:])


class Pkcs11Signer(HashSigner):
    """A secp256k1 key that lives in an HSM; this process holds a logged-in session and the key's handle only.

    Signing calls are serialised (one PKCS#11 session is not safe to share between threads); each is a call to
    the module (SoftHSM2: about 2 ms per transaction, measured by the bench; a network HSM: a round trip), so
    TxSender signs with it in a thread (`blocking`) and the event loop goes on meanwhile."""

    kind = "pkcs11"
    blocking = True

    def __init__(self, ref: Pkcs11Reference) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        self._ref = ref
        self._session = ref.open_session()
        try:
            priv = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=ref.label)
            pub = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=ref.label)
        except pkcs11.NoSuchKey:
            self._session.close()
            raise SignerError(f"PKCS#11 token {ref.token!r} has no EC key pair labelled {ref.label!r} "
                              "(`dvp-relayer keys new` or `keys import` makes one)") from None
        except pkcs11.MultipleObjectsReturned:
            self._session.close()
            raise SignerError(f"PKCS#11 token {ref.token!r} has several keys labelled {ref.label!r}") from None
        self._priv = priv
        self._public_key = _ec_point_to_public_key(bytes(pub[Attribute.EC_POINT]))
        self._lock = threading.Lock()
        super().__init__(self._public_key.to_checksum_address(), ref.uri())

    def _sign_hash(self, digest: bytes) -> Signature:
        import pkcs11
        from pkcs11 import Mechanism

        try:
            with self._lock:
                raw = bytes(self._priv.sign(digest, mechanism=Mechanism.ECDSA))
        except pkcs11.PKCS11Error as exc:
            raise SignerError(f"HSM {self._ref.token!r} refused to sign with {self._ref.label!r}: "
                              f"{type(exc).__name__}") from None
        half = len(raw) // 2
        return ethereum_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"), digest,
                                  self._public_key)

    def close(self) -> None:
        self._session.close()


def _ec_params() -> bytes:
    from pkcs11.util.ec import encode_named_curve_parameters

    return bytes(encode_named_curve_parameters("secp256k1"))


def pkcs11_generate(ref: Pkcs11Reference) -> str:
    """Generate a secp256k1 key pair inside the token (sensitive, never extractable); its address."""
    from pkcs11 import Attribute, KeyType

    with ref.open_session(rw=True) as session:
        _refuse_existing(session, ref)
        params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: _ec_params()}, local=True)
        pub, _priv = params.generate_keypair(store=True, label=ref.label, id=secrets.token_bytes(8),
                                             private_template={Attribute.SENSITIVE: True,
                                                               Attribute.EXTRACTABLE: False})
        return _ec_point_to_public_key(bytes(pub[Attribute.EC_POINT])).to_checksum_address()


def pkcs11_import(ref: Pkcs11Reference, private_key: bytes) -> str:
    """Put an existing key into the token (sensitive, not extractable from then on); its address. For moving a
    devnet or legacy key into an HSM: a key made in the HSM (`pkcs11_generate`) never existed outside it."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    key = PrivateKey(private_key)
    point = b"\x04" + key.public_key.to_bytes()
    key_id = secrets.token_bytes(8)
    with ref.open_session(rw=True) as session:
        _refuse_existing(session, ref)
        common = {Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: _ec_params(), Attribute.TOKEN: True,
                  Attribute.LABEL: ref.label, Attribute.ID: key_id}
        session.create_object(common | {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.VALUE: private_key,
                                         Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                         Attribute.EXTRACTABLE: False, Attribute.SIGN: True})
        session.create_object(common | {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.VERIFY: True,
                                        Attribute.EC_POINT: b"\x04\x41" + point})
    return key.public_key.to_checksum_address()


def _refuse_existing(session: Any, ref: Pkcs11Reference) -> None:
    if any(True for _ in session.get_objects({_attr("LABEL"): ref.label})):
        raise SignerError(f"PKCS#11 token {ref.token!r} already has an object labelled {ref.label!r}")


def _attr(name: str) -> Any:
    from pkcs11 import Attribute

    return getattr(Attribute, name)


def pkcs11_labels(ref: Pkcs11Reference) -> list[tuple[str, str]]:
    """(label, address) of every secp256k1 key pair in the token: what `keys list --token` shows."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    out = []
    with ref.open_session() as session:
        for pub in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}):
            try:
                address = _ec_point_to_public_key(bytes(pub[Attribute.EC_POINT])).to_checksum_address()
            except SignerError:
                continue  # another curve's key: not ours to show
            out.append((str(pub[Attribute.LABEL]), address))
    return sorted(out)


# --- keystore ---------------------------------------------------------------------------------------------------

def _read_secret_file(path: str, what: str) -> str:
    """A PIN or passphrase from a file (first line, without its newline). Refused when others may read it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as exc:
        raise SignerError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SignerError(f"{what}: {path} is readable by group or others (chmod 600 it)")
    value = text.splitlines()[0] if text else ""
    if not value:
        raise SignerError(f"{what}: {path} is empty")
    return value


def keystore_load(path: str, passphrase_file: str) -> LocalSigner:
    """Decrypt a Web3 Secret Storage file; the key then lives only in this process's memory."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SignerError(f"keystore {path}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise SignerError(f"keystore {path}: not JSON") from None
    passphrase = _read_secret_file(passphrase_file, f"keystore {path} passphrase")
    try:
        key = Account.decrypt(doc, passphrase)
    except ValueError:
        raise SignerError(f"keystore {path}: the passphrase in {passphrase_file} does not open it") from None
    except (KeyError, TypeError):
        raise SignerError(f"keystore {path}: not a Web3 Secret Storage (v3) file") from None
    return LocalSigner(PrivateKey(bytes(key)), f"keystore:{path}?passphrase-file={passphrase_file}",
                       "keystore")


def keystore_write(path: str, passphrase_file: str, private_key: bytes | None = None) -> str:
    """Write a new keystore (a fresh key, or `private_key`), mode 600, refusing to overwrite; its address."""
    passphrase = _read_secret_file(passphrase_file, f"keystore {path} passphrase")
    key = private_key if private_key is not None else secrets.token_bytes(32)
    doc = Account.encrypt(key, passphrase)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SignerError(f"keystore {path} exists already: not overwritten") from None
    except OSError as exc:
        raise SignerError(f"keystore {path}: cannot create it: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return to_checksum_address("0x" + str(doc["address"]))


# --- references -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignerDefaults:
    """Where a reference that leaves them out finds its PKCS#11 module, PIN file and keystore passphrase file."""

    pkcs11_module: str = DEFAULT_PKCS11_MODULE
    pkcs11_pin_file: str = ""
    keystore_passphrase_file: str = ""


def _split_reference(ref: str) -> tuple[str, str, dict[str, str]]:
    kind, sep, rest = ref.partition(":")
    if not sep or kind not in KINDS:
        raise SignerError(f"signer reference must start with one of {', '.join(k + ':' for k in KINDS)} "
                          f"(got {_shown(ref)!r})")
    body, _, query = rest.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    return kind, body, params


def _shown(ref: str) -> str:
    """A reference as it may be printed: an env: key is never shown."""
    return "env:(key hidden)" if ref.startswith("env:") else ref[:200]


def pkcs11_reference(ref: str, defaults: SignerDefaults = SignerDefaults(), *,
                     need_object: bool = True) -> Pkcs11Reference:
    """The token, key label, PIN file and module a pkcs11: URI names (`need_object=False`: a whole token)."""
    kind, body, params = _split_reference(ref)
    if kind != "pkcs11":
        raise SignerError(f"not a pkcs11: reference: {_shown(ref)!r}")
    attrs = {}
    for part in filter(None, body.split(";")):
        name, eq, value = part.partition("=")
        if not eq:
            raise SignerError(f"pkcs11 reference: {part!r} is not name=value")
        attrs[name.strip()] = unquote(value.strip())
    token, label = attrs.get("token", ""), attrs.get("object") or attrs.get("label", "")
    if not token or (need_object and not label):
        raise SignerError("pkcs11 reference needs token= and object= (or label=), e.g. "
                          "pkcs11:token=dvp;object=seller?pin-source=/etc/dvp/hsm.pin")
    if "pin-value" in params:
        raise SignerError("pkcs11 reference: pin-value is refused (it would put the PIN in the configuration); "
                          "use pin-source=FILE")
    pin = params.get("pin-source", defaults.pkcs11_pin_file).removeprefix("file:")
    if not pin:
        raise SignerError(f"pkcs11 reference for {label!r}: no PIN file (pin-source= or DVP_PKCS11_PIN_FILE); "
                          "a PIN is never read from the environment")
    return Pkcs11Reference(token=token, label=label, pin_file=pin,
                           module=params.get("module-path", defaults.pkcs11_module))


def keystore_reference(ref: str, defaults: SignerDefaults = SignerDefaults()) -> tuple[str, str]:
    kind, body, params = _split_reference(ref)
    if kind != "keystore" or not body:
        raise SignerError(f"keystore reference needs a path: keystore:/etc/dvp/seller.json (got {_shown(ref)!r})")
    passphrase_file = params.get("passphrase-file", defaults.keystore_passphrase_file)
    if not passphrase_file:
        raise SignerError(f"keystore {body}: no passphrase file (passphrase-file= or DVP_KEYSTORE_PASSPHRASE_FILE); "
                          "a passphrase is never read from the environment")
    return body, passphrase_file


def parse_reference(ref: str, defaults: SignerDefaults = SignerDefaults()) -> HashSigner:
    """The signer a reference names, ready to sign. SignerError (never echoing a key) when it cannot be."""
    ref = ref.strip()
    kind, body, _ = _split_reference(ref)
    if kind == "env":
        return env_signer(body)
    if kind == "keystore":
        return keystore_load(*keystore_reference(ref, defaults))
    return Pkcs11Signer(pkcs11_reference(ref, defaults))


def env_signer(raw_key: str) -> LocalSigner:
    """A raw hex private key (devnet only)."""
    try:
        key = PrivateKey(bytes.fromhex(raw_key.strip().removeprefix("0x")))
    except (ValueError, KeyValidationError):
        raise SignerError("env: signer is not a 32-byte private key (0x + 64 hex digits)") from None
    return LocalSigner(key, "env:(key hidden)", "env")
