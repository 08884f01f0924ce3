"""Secrets at rest: AES-256-GCM with a key from the environment, the trade id bound as associated data.

A ciphertext copied to another trade's record fails to decrypt, and Redis never holds a secret in plaintext.
"""

from __future__ import annotations

import base64
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


class SecretBox:
    """Encrypts 32-byte HTLC preimages for storage; never logs or reprs the key."""

    def __init__(self, key_b64: str) -> None:
        try:
            key = base64.urlsafe_b64decode(key_b64)
        except (ValueError, TypeError) as exc:
            raise ConfigError("DVP_SECRET_KEY is not url-safe base64") from exc
        if len(key) != 32:
            raise ConfigError("DVP_SECRET_KEY must decode to 32 bytes (see `dvp-relayer keygen`)")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, secret: bytes, trade_id: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret, trade_id.encode())).decode()

    def open(self, sealed: str, trade_id: str) -> bytes:
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], trade_id.encode())
        except InvalidTag as exc:
            raise SecretDecryptError(f"trade {trade_id}: stored secret does not decrypt with DVP_SECRET_KEY") from exc
