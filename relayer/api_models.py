"""The HTTP API's bodies as pydantic models: the handlers build their answers with them and the OpenAPI document is
generated from them (relayer/openapi.py), so the document cannot drift from what is served."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from relayer.protocol.instruction import Address, TradeInstruction
from relayer.protocol.states import TradeState


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="machine-readable code, e.g. invalid_field, untrusted_signer")
    message: str = Field(description="what went wrong, for a human")


class Accepted(BaseModel):
    """POST /v1/trades: the trade is stored (or was already, with the same terms)."""

    trade_id: str
    state: TradeState
    created: bool = Field(description="false when the same instruction had been accepted before")


class BulkSubmission(BaseModel):
    """POST /v1/trades/bulk: several signed instructions at once (each is checked on its own)."""

    model_config = ConfigDict(extra="forbid")

    trades: list[dict[str, Any]] = Field(min_length=1, max_length=500,
                                         description="signed instructions, each as POST /v1/trades takes one")


class BulkItem(BaseModel):
    """One instruction's outcome: accepted (trade_id, state, created) or refused (error, message)."""

    index: int
    trade_id: str | None = None
    state: TradeState | None = None
    created: bool | None = None
    error: str | None = Field(None, description="the code POST /v1/trades would have answered")
    message: str | None = None


class BulkResult(BaseModel):
    results: list[BulkItem]


class Timelocks(BaseModel):
    st: int | None = Field(None, description="T_st (ST chain timestamp), once planned or seen")
    sc: int | None = Field(None, description="T_sc (coin ledger timestamp), once planned or seen")
    st_seconds_left: int | None = None
    sc_seconds_left: int | None = None


class Step(BaseModel):
    """A transaction of one leg: sent (tx), then mined (block, gas)."""

    tx: str | None = None
    block: int | None = None
    gas: int | None = None


class Leg(BaseModel):
    lock: Step | None = None
    claim: Step | None = None
    refund: Step | None = None


class TradeSummary(BaseModel):
    """A trade as listed: never the secret, never keys."""

    model_config = ConfigDict(extra="forbid")

    trade_id: str
    state: TradeState
    instruction: TradeInstruction
    created_at: float
    hashlock: str | None = Field(None, description="sha256 of the secret, once the seller side created it")
    timelocks: Timelocks
    legs: dict[str, Leg] = Field(description="'st' and 'sc'")


class WaitingView(BaseModel):
    """Why a trade waits and what happens next (relayer/explain.py)."""

    on: str = Field(description="what the trade waits for now")
    then: str = Field(description="what happens next if it does not come")
    at: int | None = Field(None, description="when that happens, Unix seconds (chain time); none: no deadline")
    by_us: bool = Field(description="the next step is this relayer's to send (false: a counterparty's, or time)")


class TokenView(BaseModel):
    address: str
    symbol: str
    decimals: int
    amount: str = Field(description="the trade's amount in token units (decimals applied)")


class TradeView(TradeSummary):
    """A trade as the dashboard lists it: its summary, why it waits, its tokens by name."""

    waiting: WaitingView | None = None
    watch_only: str | None = Field(None, description="who marked it watch-only (this relayer holds no party's key)")
    tokens: dict[str, TokenView] = Field(description="'st' and 'sc'")
    audit_entries: int = Field(description="length of its audit trail (GET /v1/trades/{id} has it whole)")


class ChainHealth(BaseModel):
    name: str
    role: str
    chain_id: int | None
    head: int = Field(description="the latest block seen (-1: none yet)")
    confirmed: int = Field(description="the last block whose events were all read")
    lag_blocks: int
    fresh: bool = Field(description="followed successfully in the last round")
    head_age_seconds: float | None = Field(None, description="since the head last moved")
    rpc_errors: int = Field(description="transport errors since the worker started")
    endpoint: str = Field(description="which of the configured endpoints is in use, e.g. '1 of 2'")


class ClockOffset(BaseModel):
    st: str
    sc: str
    seconds: int = Field(description="ST chain clock minus coin ledger clock")
    within_bound: bool


class HealthStrip(BaseModel):
    ready: bool
    redis: bool
    chains: list[ChainHealth]
    clock_offsets: list[ClockOffset]
    max_clock_skew: float
    intake: IntakeStatus
    webhooks: dict[str, int] | None = Field(None, description="backlog and dead letters, when webhooks are on")
    sweep: dict[str, Any] = Field(description="the pending and the last refund sweep an operator asked for")


class Overview(BaseModel):
    """GET /v1/overview: everything the dashboard shows, in one call."""

    totals: dict[str, int] = Field(description="trades by state, from the store; 'open' counts the unfinished")
    health: HealthStrip
    trades: list[TradeView]
    offset: int
    limit: int
    state: str | None
    now: float = Field(description="the worker's wall clock, Unix seconds")


class TradeDocument(TradeSummary):
    """One trade with its audit trail."""

    timeline: list[dict[str, Any]] = Field(description="audit entries: t, actor, event and its data")


class TradeList(BaseModel):
    items: list[TradeSummary]
    offset: int
    limit: int


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool | str] = Field(description="redis, st, sc: true, or why not")


_HEX32 = r"^0x[0-9a-fA-F]{64}$"
_UINT256 = 2**256
_UINT64 = 2**64


class LockTermsBody(BaseModel):
    """The EIP-712 `Lock` message the holder signed (docs/holder-signed-locks.md): field for field."""

    model_config = ConfigDict(extra="forbid")

    tradeId: str = Field(pattern=_HEX32)
    token: Address
    amount: int = Field(ge=0, lt=_UINT256, description="base units (a decimal string is taken too)")
    receiver: Address
    hashlock: str = Field(pattern=_HEX32)
    timelock: int = Field(ge=0, lt=_UINT64, description="chain timestamp")
    nonce: int = Field(ge=0, lt=_UINT256, description="the escrow's nonces(holder) this signature uses")
    deadline: int = Field(ge=0, lt=_UINT256, description="last chain timestamp at which the lock may be sent")


class PermitBody(BaseModel):
    """An ERC-2612 permit of the holder for the escrow (only needed without an allowance)."""

    model_config = ConfigDict(extra="forbid")

    value: int = Field(ge=0, lt=_UINT256)
    deadline: int = Field(ge=0, lt=_UINT256)
    v: int = Field(ge=0, lt=256)
    r: str = Field(pattern=_HEX32)
    s: str = Field(pattern=_HEX32)


class LockAuthorizationBody(BaseModel):
    """POST /v1/trades/{trade_id}/authorizations: a holder's signed lock for one leg of the trade."""

    model_config = ConfigDict(extra="forbid")

    leg: str = Field(pattern="^(st|sc)$", description="st: the seller's ST lock; sc: the buyer's SC lock")
    lock: LockTermsBody
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65 bytes r‖s‖v over the Lock")
    permit: PermitBody | None = None


class IntakeControl(BaseModel):
    """An operator pauses or resumes intake for every worker of this firm."""

    model_config = ConfigDict(extra="forbid")
    paused: bool
    reason: str = Field("", max_length=500, description="shown to whoever is refused meanwhile, and in the log")


class IntakeStatus(BaseModel):
    paused: bool
    by: str | None = Field(None, description="who paused it: api:<token fingerprint> or cli:<user>@<host>")
    at: float | None = Field(None, description="when, Unix seconds")
    reason: str | None = None


class DeadLetter(BaseModel):
    event: dict[str, Any] = Field(description="the webhook body that could not be delivered")
    attempts: int
    last_error: str
    dead_at: float


class DeadLetters(BaseModel):
    """Webhook events that failed every attempt (newest first)."""

    events: list[DeadLetter]


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class OperatorNote(BaseModel):
    """The reason an operator gives for an action (kept in the audit trail and the operator log)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class OperatorDone(BaseModel):
    """An operator action on one trade was taken (watch-only marked, or a re-drive queued for its worker)."""

    trade_id: str
    action: str
    state: TradeState


class SweepStatus(BaseModel):
    """The refund sweep an operator asked for (pending until the sweeping worker ran it) and the last one run."""

    pending: dict[str, Any] | None
    last: dict[str, Any] | None


class Cancelled(BaseModel):
    """The trade is ABORTED by the operator: nothing had been locked for it."""

    trade_id: str
    state: TradeState


class AuthorizationAccepted(BaseModel):
    """The authorisation is kept with the trade; the relayer sends the lock when it is due."""

    trade_id: str
    leg: str
    created: bool = Field(description="false when the same authorisation had been kept before")


class LockRequest(BaseModel):
    """GET /v1/trades/{trade_id}/authorizations/{leg}: what the leg's holder should sign now."""

    leg: str
    signer: str = Field(description="the account whose signature the lock needs")
    typed_data: dict[str, Any] = Field(description="the EIP-712 Lock, ready for eth_signTypedData_v4")
    timelock_bounds: dict[str, int] = Field(description="earliest and latest timelock the relayer takes now")
    allowance: str = Field(description="the holder's allowance to the escrow, base units")
    permit_typed_data: dict[str, Any] | None = Field(None, description="the ERC-2612 Permit to sign when the "
                                                     "allowance is short and the token has permits")


class DvpAuthorizationBody(BaseModel):
    """POST /v1/trades/{trade_id}/authorizations, same-ledger trades: one party's EIP-712 `DvP` signature (from
    its own firm's relayer, its custody system or the back office), so that two firms' signatures meet."""

    model_config = ConfigDict(extra="forbid")

    leg: str = Field(pattern="^dvp$")
    party: Address = Field(description="the seller or the buyer of the trade")
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65 bytes r‖s‖v over the DvP terms")


class DvpRequest(BaseModel):
    """GET /v1/trades/{trade_id}/authorizations/dvp: the DvP terms, and the parties' signatures this relayer has."""

    leg: str
    typed_data: dict[str, Any] = Field(description="the EIP-712 DvP message both parties sign")
    signatures: dict[str, str] = Field(description="party address -> its signature, for the parties whose key this "
                                       "relayer holds or whose signature it was given")


HealthStrip.model_rebuild()
Overview.model_rebuild()
