"""The Progmat Coin ledger: where the stablecoin leg is locked and claimed; the issuer issues and redeems."""

from __future__ import annotations

from adapters.contracts import encode_call
from adapters.evm import TxSender
from adapters.htlc import HtlcLedger


class ProgmatCoinLedger(HtlcLedger):
    """The SC leg's ledger. The buyer locks here; the seller claims, revealing the secret."""

    kind = "sc"

    async def issue(self, issuer: TxSender, token: str, to: str, amount: int, deposit_ref: bytes) -> None:
        """Mint coins against a fiat deposit (issuer only)."""
        await issuer.transact(token, encode_call("Stablecoin", "issue", to, amount, deposit_ref))

    async def redeem(self, holder: TxSender, token: str, amount: int, withdrawal_ref: bytes) -> None:
        """Burn the holder's coins for a fiat withdrawal."""
        await holder.transact(token, encode_call("Stablecoin", "redeem", amount, withdrawal_ref))
