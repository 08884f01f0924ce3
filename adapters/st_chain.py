"""The security-token platform chain (a third-party EVM chain): where the ST leg is locked and claimed."""

from __future__ import annotations

from adapters.htlc import HtlcLedger


class StChainLedger(HtlcLedger):
    """The ST leg's ledger. The seller locks here; the buyer (or any watcher) claims with the revealed secret."""

    kind = "st"
