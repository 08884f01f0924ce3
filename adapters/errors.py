"""Exception root of the adapters. Every error a ledger adapter raises derives from LedgerError."""

from __future__ import annotations


class LedgerError(Exception):
    """Raised when a ledger operation fails; subclasses say which way."""


class RpcUnavailable(LedgerError):
    """Raised when every configured RPC endpoint of a chain failed to answer (down, hung, or garbage)."""


class RpcError(LedgerError):
    """Raised when a node answered a JSON-RPC error (not a transport failure): `code` is the JSON-RPC error code.

    A read addressed to a block the chain no longer has (a reorg or rollback between reading the head and the
    read; anvil answers -32602) is one; the caller treats the chain as stale for this round and reads again."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransactionReverted(LedgerError):
    """Raised when a transaction was mined but reverted, or would revert when estimated."""

    def __init__(self, message: str, tx_hash: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.reason = reason


class TransactionDropped(LedgerError):
    """Raised when a sent transaction disappeared (reorged out, dropped) and must be re-evaluated."""


class ReceiptTimeout(LedgerError):
    """Raised when a transaction was not mined within the wait bound (even after fee bumps)."""


class LeaseLost(LedgerError):
    """Raised when this process may no longer hold the lease to sign for an account; another worker may."""

    def __init__(self, message: str, account: str | None = None) -> None:
        super().__init__(message)
        self.account = account
