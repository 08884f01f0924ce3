"""The OpenAPI 3.1 document served at /openapi.json, generated from the pydantic models of the request and response
bodies (relayer/api_models.py, the signed instruction) plus the routes' parameters; a test keeps it in sync with
the routes and fuzzes the server against it with every schemathesis check."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from relayer.api_models import (
    Accepted,
    AuthorizationAccepted,
    DvpAuthorizationBody,
    DvpRequest,
    LockAuthorizationBody,
    LockRequest,
    BulkResult,
    BulkSubmission,
    CancelBody,
    Cancelled,
    DeadLetters,
    ErrorBody,
    Health,
    IntakeControl,
    IntakeStatus,
    OperatorDone,
    OperatorNote,
    Overview,
    Readiness,
    SweepStatus,
    TradeDocument,
    TradeList,
)
from relayer.protocol.instruction import SignedInstruction
from relayer.report import WHEN_PATTERN
from relayer.protocol.states import TradeState

MAX_OFFSET = 10**9  # far beyond any trade count; keeps Redis ranges within their signed 64-bit bounds
MAX_LIMIT = 500
TRADE_ID_PATTERN = "^0x[0-9a-fA-F]{64}$"

_MODELS: list[type[BaseModel]] = [SignedInstruction, Accepted, BulkSubmission, BulkResult, ErrorBody, TradeDocument,
                                  TradeList, Health, Readiness, LockAuthorizationBody, DvpAuthorizationBody,
                                  AuthorizationAccepted, LockRequest, DvpRequest, IntakeControl, IntakeStatus,
                                  CancelBody, Cancelled, DeadLetters, OperatorNote, OperatorDone, SweepStatus,
                                  Overview]
_REQUEST_BODIES = (SignedInstruction, LockAuthorizationBody, DvpAuthorizationBody, IntakeControl, CancelBody,
                   OperatorNote)


def _schemas() -> dict[str, Any]:
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation" if m in _REQUEST_BODIES else "serialization") for m in _MODELS]
    _, top = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = top["$defs"]
    return defs


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _submit(summary: str, body: type[BaseModel], responses: dict[str, Any]) -> dict[str, Any]:
    """A POST with a bearer token and a JSON body of `body`."""
    return {"summary": summary, "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": responses}


def _err(description: str) -> dict[str, Any]:
    return _json(ErrorBody, description)


_PAGING_PARAMS = [
    {"name": "state", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in TradeState]},
     "description": "only trades in this state: ONE_SIDED and REJECTED among all trades (an index), an "
                    "open state among the open trades, SETTLED or ABORTED among the newest 5,000"},
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
]

_TRADE_ID_PARAM = {"name": "trade_id", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": TRADE_ID_PATTERN}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "dvp-relayer", "version": "1",
             "description": "Cross-chain atomic DvP relayer: submit signed trade instructions, follow settlement."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _schemas(),
    },
    "paths": {
        "/v1/trades": {
            "post": _submit("Submit a signed trade instruction", SignedInstruction, {
                    "202": _json(Accepted, "accepted (or already accepted with the same terms)"),
                    "400": _err("malformed JSON, wrong types or values, bad address checksums"),
                    "401": _err("missing or wrong bearer token"),
                    "403": _err("a signature that recovers no key, or one from an untrusted key (another "
                                "deployment's domain salt included); forbidden: a read token"),
                    "409": _err("same trade id with other terms"),
                    "413": _err("body too large"),
                    "415": _err("not application/json"),
                    "422": _err("unknown chain or token, deadline too close"),
                    "503": _err("shutting down, or not connected to its chains and Redis yet"),
            }),
            "get": {
                "summary": "List trades, newest first",
                "parameters": _PAGING_PARAMS,
                "responses": {"200": _json(TradeList, "a page of trades"),
                              "400": _err("bad paging or state"), "401": _err("unauthorized"),
                              "403": _err("forbidden: the token's role may not read")},
            },
        },
        "/v1/trades/bulk": {
            "post": _submit("Submit up to 500 signed trade instructions at once; each is answered on its own",
                            BulkSubmission, {
                    "200": _json(BulkResult, "one result per instruction, in order: accepted (trade_id, state, "
                                             "created) or refused (error, message, as POST /v1/trades would answer)"),
                    "400": _err("malformed JSON, or not {\"trades\": [1 to 500 items]}"),
                    "401": _err("missing or wrong bearer token"),
                    "403": _err("forbidden: the token's role may not submit (a read token)"),
                    "413": _err("body too large"),
                    "415": _err("not application/json"),
                    "503": _err("shutting down, or not connected to its chains and Redis yet"),
            }),
        },
        "/v1/trades/{trade_id}": {
            "get": {
                "summary": "One trade: state, legs, timelocks, audit timeline",
                "parameters": [_TRADE_ID_PARAM],
                "responses": {"200": _json(TradeDocument, "the trade"), "400": _err("not a trade id"),
                              "401": _err("unauthorized"), "403": _err("forbidden: the token's role may not read"),
                              "404": _err("no such trade")},
            }
        },
        "/v1/trades/{trade_id}/authorizations": {
            "post": {
                "summary": "Submit a holder's signed lock for one leg (EIP-712 Lock: the relayer sends lockWithSig from "
                           "an account it holds), or one party's DvP signature for a same-ledger trade "
                           "(docs/holder-signed-locks.md)",
                "security": [{"bearer": []}], "parameters": [_TRADE_ID_PARAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    _ref(LockAuthorizationBody), _ref(DvpAuthorizationBody)]}}}},
                "responses": {
                    "202": _json(AuthorizationAccepted, "kept with the trade (or the same one was kept before)"),
                    "400": _err("malformed JSON, wrong types or values"),
                    "401": _err("missing or wrong bearer token"),
                    "403": _err("wrong_signer: the signature is not the holder's (party's), or signs other terms; "
                                "forbidden: the token's role may not submit"),
                    "404": _err("no such trade"),
                    "409": _err("replayed (nonce used), nonce_in_use, conflicting_authorization, too_early, "
                                "trade_finished, concurrent_update"),
                    "413": _err("body too large"),
                    "415": _err("not application/json"),
                    "422": _err("wrong_terms, expired, no_allowance, not_holder_signed, not_htlc, not_same_ledger"),
                    "503": _err("shutting down, or a chain or Redis is not answering"),
                },
            },
        },
        "/v1/trades/{trade_id}/authorizations/{leg}": {
            "get": {
                "summary": "st / sc: what the holder of the leg's account should sign now (EIP-712 Lock, and a "
                           "Permit); dvp: the same-ledger terms and the party signatures this relayer can give",
                "parameters": [_TRADE_ID_PARAM, {"name": "leg", "in": "path", "required": True,
                                                 "schema": {"type": "string", "enum": ["st", "sc", "dvp"]}}],
                "responses": {"200": {"description": "the messages to sign (st, sc) or the DvP signatures (dvp)",
                                      "content": {"application/json": {"schema": {"oneOf": [
                                          _ref(LockRequest), _ref(DvpRequest)]}}}},
                              "400": _err("not a trade id"),
                              "401": _err("unauthorized (dvp always needs a submit or operator token)"),
                              "403": _err("forbidden: the token's role may not read (dvp: may not submit)"),
                              "404": _err("no such trade"),
                              "409": _err("too_early, trade_finished"),
                              "422": _err("not_holder_signed, not_same_ledger"),
                              "503": _err("a chain or Redis is not answering")},
            }
        },
        "/v1/operator/intake": {
            "get": {"summary": "Whether intake is paused, by whom and why",
                    "responses": {"200": _json(IntakeStatus, "the pause in force, if any"),
                                  "401": _err("unauthorized"),
                                  "403": _err("forbidden: the token's role may not read")}},
            "post": _submit("Pause or resume intake for every worker of this firm (operator token)", IntakeControl, {
                "200": _json(IntakeStatus, "the pause in force now, if any"),
                "400": _err("malformed JSON, wrong types or values"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("forbidden: the token's role is not operator"),
                "413": _err("body too large"),
                "415": _err("not application/json"),
                "503": _err("shutting down, or Redis is not answering"),
            }),
        },
        "/v1/reports": {
            "get": {"summary": "The trades accepted in [from, to): times, parties, token symbols and amounts, "
                               "transaction hashes, gas, outcome (JSON adds daily totals); verify=true checks each "
                               "row against both chains and lists what disagrees in its problems",
                    "parameters": [
                        {"name": "from", "in": "query", "required": True,
                         "schema": {"type": "string", "pattern": WHEN_PATTERN},
                         "description": "ISO date or date-time, UTC unless it names a zone"},
                        {"name": "to", "in": "query", "required": True,
                         "schema": {"type": "string", "pattern": WHEN_PATTERN}},
                        {"name": "format", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["json", "csv"]}},
                        {"name": "verify", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["true", "false"]}},
                    ],
                    "responses": {"200": {"description": "the report", "content": {
                                      "application/json": {"schema": {"type": "object"}},
                                      "text/csv": {"schema": {"type": "string"}}}},
                                  "400": _err("from or to is not an ISO date, or a bad format / verify"),
                                  "422": _err("invalid_range: from or to names no such day or time"),
                                  "401": _err("unauthorized"), "403": _err("forbidden: the token's role may not read"),
                                  "503": _err("a chain or Redis is not answering")}},
        },
        "/v1/operator/webhooks/dead": {
            "get": {"summary": "Webhook events that failed every delivery attempt, newest first (operator token)",
                    "security": [{"bearer": []}],
                    "responses": {"200": _json(DeadLetters, "the dead-letter list"),
                                  "401": _err("unauthorized"),
                                  "403": _err("forbidden: the token's role is not operator"),
                                  "503": _err("Redis is not answering")}},
        },
        "/v1/trades/{trade_id}/cancel": {
            "post": {**_submit("Cancel a MATCHED trade nothing was locked for (operator token): ABORTED, with who did "
                               "it. A trade with a lock ends by refunds at its timelocks, never by a cancel",
                               CancelBody, {
                "200": _json(Cancelled, "cancelled"),
                "400": _err("malformed JSON, wrong types or values, not a trade id"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("forbidden: the token's role is not operator"),
                "404": _err("no such trade"),
                "409": _err("not_cancellable: not MATCHED, or a lock is on chain or being sent"),
                "413": _err("body too large"),
                "415": _err("not application/json"),
                "503": _err("shutting down, or a chain or Redis is not answering"),
            }), "parameters": [_TRADE_ID_PARAM]},
        },
        "/v1/trades/{trade_id}/watch-only": {
            "post": {**_submit("Mark a trade this relayer holds no party's key for as watch-only (operator token): "
                               "shown as such, audited with who did it; it still refunds as a watcher", OperatorNote, {
                "200": _json(OperatorDone, "marked"),
                "400": _err("malformed JSON, wrong types or values, not a trade id"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("forbidden: the token's role is not operator"),
                "404": _err("no such trade"),
                "409": _err("not_watch_only: this relayer holds the seller's or the buyer's key, or the trade is "
                            "finished; concurrent_update"),
                "413": _err("body too large"),
                "415": _err("not application/json"),
                "503": _err("shutting down, or a chain or Redis is not answering"),
            }), "parameters": [_TRADE_ID_PARAM]},
        },
        "/v1/trades/{trade_id}/redrive": {
            "post": {**_submit("Re-drive a trade (operator token): the worker driving it reads both its chains again "
                               "from the trade's first blocks and decides it again; the protocol decides what follows",
                               OperatorNote, {
                "202": _json(OperatorDone, "queued for the worker driving the trade (audit: redriven)"),
                "400": _err("malformed JSON, wrong types or values, not a trade id"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("forbidden: the token's role is not operator"),
                "404": _err("no such trade"),
                "409": _err("trade_finished"),
                "413": _err("body too large"),
                "415": _err("not application/json"),
                "503": _err("shutting down, or Redis is not answering"),
            }), "parameters": [_TRADE_ID_PARAM]},
        },
        "/v1/operator/sweep": {
            "get": {"summary": "The refund sweep an operator asked for: pending, and the last one run",
                    "responses": {"200": _json(SweepStatus, "pending and last"),
                                  "401": _err("unauthorized"),
                                  "403": _err("forbidden: the token's role may not read"),
                                  "503": _err("Redis is not answering")}},
            "post": _submit("Run the refund sweep now and decide every trade again (operator token)", OperatorNote, {
                "202": _json(SweepStatus, "asked; GET shows the outcome once the sweeping worker ran it"),
                "400": _err("malformed JSON, wrong types or values"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("forbidden: the token's role is not operator"),
                "413": _err("body too large"),
                "415": _err("not application/json"),
                "503": _err("shutting down, or Redis is not answering"),
            }),
        },
        "/v1/overview": {
            "get": {
                "summary": "The dashboard's one call: totals by state from the store, the health strip (readiness, "
                           "follower lag, RPC errors, clock offsets, intake, webhooks, sweep) and a page of trades, "
                           "each with why it waits and what happens next",
                "parameters": _PAGING_PARAMS,
                "responses": {"200": _json(Overview, "the overview"),
                              "400": _err("bad paging or state"), "401": _err("unauthorized"),
                              "403": _err("forbidden: the token's role may not read"),
                              "503": _err("Redis is not answering")},
            },
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(Health, "alive")}}},
        "/readyz": {"get": {"summary": "Readiness: Redis, both RPCs, follower lag, escrows and tokens configured",
                            "responses": {"200": _json(Readiness, "ready"), "503": _json(Readiness, "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/": {"get": {"summary": "Operator dashboard (HTML)", "responses": {"200": {
            "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    },
}
