"""The OpenAPI 3 document served at /openapi.json (a test keeps it in sync with the routes)."""

from __future__ import annotations

from typing import Any

_ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "description": "EIP-55 checksummed address"}
_UINT = {"type": "integer", "minimum": 1}
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string", "description": "machine-readable code"},
                   "message": {"type": "string"}},
}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_INSTRUCTION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tradeId", "stChainId", "stToken", "stAmount", "scChainId", "scToken", "scAmount",
                 "sellerStAccount", "sellerScAccount", "buyerScAccount", "buyerStAccount", "deadline"],
    "properties": {
        "tradeId": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
        "stChainId": _UINT, "stToken": _ADDRESS, "stAmount": _UINT,
        "scChainId": _UINT, "scToken": _ADDRESS, "scAmount": _UINT,
        "sellerStAccount": _ADDRESS, "sellerScAccount": _ADDRESS,
        "buyerScAccount": _ADDRESS, "buyerStAccount": _ADDRESS,
        "deadline": {"type": "integer", "minimum": 1, "maximum": 2**64 - 1},
    },
}

_TRADE_ID_PARAM = {"name": "trade_id", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "dvp-relayer", "version": "1",
             "description": "Cross-chain atomic DvP relayer: submit signed trade instructions, follow settlement."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _ERROR,
            "TradeInstruction": _INSTRUCTION,
            "SignedInstruction": {
                "type": "object", "additionalProperties": False, "required": ["instruction", "signature"],
                "properties": {"instruction": {"$ref": "#/components/schemas/TradeInstruction"},
                               "signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"}},
            },
            "Accepted": {"type": "object", "required": ["trade_id", "state", "created"],
                         "properties": {"trade_id": {"type": "string"}, "state": {"type": "string"},
                                        "created": {"type": "boolean"}}},
            "Trade": {"type": "object", "required": ["trade_id", "state", "instruction", "timelocks", "legs"],
                      "properties": {"trade_id": {"type": "string"}, "state": {"type": "string"},
                                     "instruction": {"$ref": "#/components/schemas/TradeInstruction"},
                                     "timelocks": {"type": "object"}, "legs": {"type": "object"},
                                     "timeline": {"type": "array", "items": {"type": "object"}}}},
        },
    },
    "paths": {
        "/v1/trades": {
            "post": {
                "summary": "Submit a signed trade instruction",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SignedInstruction"}}}},
                "responses": {
                    "202": {"description": "accepted (or already accepted with the same terms)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                    "400": _err("malformed JSON, wrong types or values, bad signature"),
                    "401": _err("missing or wrong bearer token"),
                    "403": _err("signature from an untrusted key"),
                    "409": _err("same trade id with other terms"),
                    "413": _err("body too large"),
                    "415": _err("not application/json"),
                    "422": _err("unknown chain or token, deadline too close"),
                    "503": _err("shutting down, or not connected to its chains and Redis yet"),
                },
            },
            "get": {
                "summary": "List trades, newest first",
                "parameters": [
                    {"name": "state", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["MATCHED", "ST_LOCKED", "SC_LOCKED", "SC_CLAIMED",
                                                           "SETTLED", "REFUNDING", "ABORTED", "REJECTED", "ONE_SIDED"]}},
                    {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                ],
                "responses": {"200": {"description": "a page of trades",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "400": _err("bad paging or state"), "401": _err("unauthorized")},
            },
        },
        "/v1/trades/{trade_id}": {
            "get": {
                "summary": "One trade: state, legs, timelocks, audit timeline",
                "parameters": [_TRADE_ID_PARAM],
                "responses": {"200": {"description": "the trade",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Trade"}}}},
                              "401": _err("unauthorized"), "404": _err("no such trade")},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: Redis, both RPCs, follower lag",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
        "/": {"get": {"summary": "Operator dashboard (HTML)", "responses": {"200": {"description": "HTML page"}}}},
    },
}
