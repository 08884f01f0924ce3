"""Exception root of the adapters. Every error a ledger adapter raises derives from LedgerError."""

from __future__ import annotations


class LedgerError(Exception):
    """Raised when a ledger operation fails; subclasses say which way."""


class RpcUnavailable(LedgerError):
    """Raised when every configured RPC endpoint of a chain failed to answer (down, hung, or garbage)."""


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
