"""Exception root of the relayer service. Every error the relayer raises on purpose derives from RelayerError."""

from __future__ import annotations


class RelayerError(Exception):
    """Raised when the relayer refuses or cannot do something; `code` is a stable machine-readable reason."""

    code = "relayer_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInstruction(RelayerError):
    """Raised when a trade instruction is malformed, unsigned by a trusted PTS key, or outside what we serve."""

    code = "invalid_instruction"


class UnknownChain(InvalidInstruction):
    """Raised when an instruction names a chain id this relayer does not follow in that role (ST or coin)."""

    code = "unknown_chain"


class ComplianceRefused(InvalidInstruction):
    """Raised when a token's own rules would refuse one of the transfers the trade needs (paused, a frozen
    wallet or units, an unverified receiver, the compliance's canTransfer): refused at intake, nothing locked."""

    code = "compliance_refused"


class AuthorizationRefused(RelayerError):
    """Raised when a holder's lock authorisation is not the one this trade needs: wrong terms, expired, a nonce
    already used (replayed), signed by someone else. Nothing is stored, nothing is sent."""

    code = "authorization_refused"


class ConflictingInstruction(RelayerError):
    """Raised when a trade id is already known with different terms (replay with other terms)."""

    code = "conflicting_trade_id"


class ConcurrentUpdate(RelayerError):
    """Raised when a trade record changed between read and write (compare-and-set lost); re-read and retry."""

    code = "concurrent_update"


class ConfigError(RelayerError):
    """Raised when the configuration is incomplete or inconsistent."""

    code = "config_error"


class NotReady(RelayerError):
    """Raised when a worker cannot take a trade yet (its chains or Redis are not connected); retry later."""

    code = "not_ready"


class NotReplicated(RelayerError):
    """Raised when an accepted trade was written to the Redis master but fewer replicas than
    DVP_REDIS_MIN_REPLICAS acknowledged it in time: a failover now could lose it, so it is not answered as
    accepted (the PTS retries; the same instruction again is idempotent)."""

    code = "not_replicated"


class IntakePaused(RelayerError):
    """Raised when an operator paused intake (relayer/operator.py): nothing new is accepted until it is resumed."""

    code = "intake_paused"


class NotCancellable(RelayerError):
    """Raised when an operator's cancel is refused: something is locked or about to be, or the trade is over (it
    then ends the protocol's way, by refunds at the timelocks if nobody claims)."""

    code = "not_cancellable"


class NotWatchOnly(RelayerError):
    """Raised when an operator marks a trade watch-only that this relayer does act on (it holds the seller's or the
    buyer's key), or one that is finished."""

    code = "not_watch_only"


class FencedOut(ConcurrentUpdate):
    """Raised when a state write carries a trade lease value this worker no longer holds: another worker took
    the trade over (fencing), so this one must stop acting on it."""

    code = "fenced_out"


class LeaseLapsed(FencedOut):
    """Raised when a state write finds the trade's lease expired with no holder: its renewals were refused (Redis
    refusing writes) or came too late. Nobody else drives the trade yet; while Redis refuses every write nobody
    can, so the trade's claims and refunds may still go out (engine.py); otherwise it is a FencedOut."""

    code = "lease_lapsed"


class CorruptRecord(RelayerError):
    """Raised when a stored trade record cannot be read back (a field missing or malformed): that trade is set
    aside and alerted on; every other trade goes on."""

    code = "corrupt_record"

    def __init__(self, trade_id: str, reason: str) -> None:
        super().__init__(f"trade record {trade_id} cannot be read: {reason}")
        self.trade_id = trade_id
