"""Secrets at rest: AES-256-GCM with a key from the environment, the trade id bound as associated data.

A ciphertext copied to another trade's record fails to decrypt, and Redis never holds a secret in plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relayer.errors import ConfigError, RelayerError


class SecretDecryptError(RelayerError):
    """Raised when a stored secret does not decrypt with the configured key (wrong key or tampered record)."""

    code = "secret_decrypt_failed"


def generate_key() -> str:
    """A new encryption key, url-safe base64 (put it in DVP_SECRET_KEY)."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()


def key_id(key: bytes) -> str:
    """A key's public name: 8 hex digits of its SHA-256 (shows which key sealed a secret, reveals nothing)."""
    return hashlib.sha256(b"dvp-secret-key-id" + key).hexdigest()[:8]


def _decode(key_b64: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(key_b64)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} is not url-safe base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{where} must decode to 32 bytes (see `dvp-relayer keygen`)")
    return key


class SecretBox:
    """Encrypts 32-byte HTLC preimages for storage; never logs or reprs a key.

    A sealed secret is `<key id>.<base64(nonce ‖ ciphertext)>`: it names the key that sealed it, so the current
    key (DVP_SECRET_KEY) can be rotated while older ones (DVP_PREVIOUS_SECRET_KEYS) still open what they sealed,
    and no trade in flight loses its secret. A secret sealed before key ids existed (no `.`) is tried with every
    key.
    """

    def __init__(self, key_b64: str, previous: list[str] | None = None) -> None:
        current = _decode(key_b64, "DVP_SECRET_KEY")
        self.current_id = key_id(current)
        self._current = AESGCM(current)
        self._keys: dict[str, AESGCM] = {self.current_id: self._current}
        for i, old in enumerate(previous or [], 1):
            raw = _decode(old, f"DVP_PREVIOUS_SECRET_KEYS entry {i}")
            self._keys.setdefault(key_id(raw), AESGCM(raw))

    def __repr__(self) -> str:
        return f"SecretBox(current={self.current_id}, keys={len(self._keys)}, <keys hidden>)"

    def seal(self, secret: bytes, trade_id: str) -> str:
        nonce = os.urandom(12)
        sealed = base64.b64encode(nonce + self._current.encrypt(nonce, secret, trade_id.encode())).decode()
        return f"{self.current_id}.{sealed}"

    @staticmethod
    def sealed_with(sealed: str) -> str | None:
        """The id of the key that sealed `sealed` (None: sealed before key ids were kept)."""
        return sealed.split(".", 1)[0] if "." in sealed else None

    def open(self, sealed: str, trade_id: str) -> bytes:
        kid = self.sealed_with(sealed)
        raw = base64.b64decode(sealed.split(".", 1)[1] if kid is not None else sealed)
        candidates = [self._keys[kid]] if kid in self._keys else ([] if kid is not None else list(self._keys.values()))
        for aead in candidates:
            try:
                return aead.decrypt(raw[:12], raw[12:], trade_id.encode())
            except InvalidTag:
                continue
        if kid is not None and kid not in self._keys:
            raise SecretDecryptError(f"trade {trade_id}: its secret was sealed with key {kid}, which is neither "
                                     "DVP_SECRET_KEY nor in DVP_PREVIOUS_SECRET_KEYS")
        raise SecretDecryptError(f"trade {trade_id}: stored secret does not decrypt with DVP_SECRET_KEY "
                                 "or DVP_PREVIOUS_SECRET_KEYS (wrong key or tampered record)")

    def reseal(self, sealed: str, trade_id: str) -> str | None:
        """The secret sealed under the current key, or None when it is already."""
        if self.sealed_with(sealed) == self.current_id:
            return None
        return self.seal(self.open(sealed, trade_id), trade_id)
