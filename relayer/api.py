"""The HTTP face: intake of signed trades, trade queries, OpenAPI, health, readiness, metrics, dashboard.

Thin on purpose: every rule lives in the engine and the protocol package; it sees the worker only through
its read model (relayer/read_model.py). Errors are JSON
{"error": <machine-readable code>, "message": <human text>} with a 4xx status; nothing is written on a 4xx.
"""

from __future__ import annotations

import hmac
import json
from decimal import Decimal
import re
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from adapters.errors import LedgerError

from relayer.authorizations import LEGS, parse_authorization
from relayer.config import API_ROLES
from relayer.read_model import ReadModel
from relayer.errors import ConflictingInstruction, RelayerError
from relayer.logging import get_logger
from relayer.metrics import REGISTRY
from relayer.api_models import (
    Accepted,
    AuthorizationAccepted,
    DvpRequest,
    LockRequest,
    BulkItem,
    BulkResult,
    CancelBody,
    Cancelled,
    DeadLetters,
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
    TradeSummary,
    TradeView,
)
from relayer.openapi import MAX_LIMIT, MAX_OFFSET, OPENAPI
from relayer.operator import token_actor
from relayer.webhooks import dead_letters
from relayer import report as rpt
from relayer.protocol.instruction import parse_signed, validated
from relayer.protocol.states import TradeState
from relayer.store import TradeRecord

READ_MODEL = web.AppKey("read_model", ReadModel)
API_TOKENS = web.AppKey("api_tokens", dict)
READ_AUTH = web.AppKey("read_auth", bool)
ACCEPTING = web.AppKey("accepting", dict)
MAX_BODY = 64 * 1024  # one instruction
MAX_BULK_BODY = 1024 * 1024  # POST /v1/trades/bulk: up to MAX_BULK instructions
MAX_BULK = 500
MAX_JSON_DEPTH = 32  # a trade instruction nests 2 deep; bounded before parsing (see json_nesting_depth)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_TRADE_ID = re.compile(r"^0x[0-9a-f]{64}$")
MAX_LAG_BLOCKS = web.AppKey("max_lag_blocks", int)

_STATUS_FOR_CODE = {
    "invalid_json": 400, "invalid_field": 400, "bad_signature": 403,
    "untrusted_signer": 403, "unknown_chain": 422, "unknown_token": 422, "deadline_too_close": 422,
    "compliance_refused": 422,
    "conflicting_trade_id": 409, "unauthorized": 401, "forbidden": 403, "not_found": 404, "body_too_large": 413,
    "shutting_down": 503, "not_ready": 503, "not_replicated": 503,
    # holder lock authorisations (relayer/authorizations.py)
    "wrong_terms": 422, "expired": 422, "no_allowance": 422, "not_holder_signed": 422, "wrong_signer": 403,
    "replayed": 409, "nonce_in_use": 409, "conflicting_authorization": 409, "too_early": 409, "trade_finished": 409,
    "concurrent_update": 409, "not_same_ledger": 422, "not_htlc": 422,
    # operator actions (relayer/operator.py)
    "intake_paused": 503, "not_cancellable": 409, "not_watch_only": 409, "invalid_range": 422,
}


def json_nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in `body` (brackets inside strings do not count), without parsing it: the
    parser recurses once per level, so a hostile body must be refused before it reaches the parser."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return body.count(b"[") + body.count(b"{")
    depth = deepest = 0
    for c in _JSON_STRING.sub(b"", body).translate(None, delete=bytes(set(range(256)) - set(b"[]{}"))):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def error(code: str, message: str, status: int | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status or _STATUS_FOR_CODE.get(code, 400))


def _grants(request: web.Request) -> frozenset[str]:
    """What the request's bearer token may do (empty: no valid token). Every token is compared, in constant time."""
    tokens: dict[str, frozenset[str]] = request.app[API_TOKENS]
    header = request.headers.get("Authorization", "")
    presented = (header[7:] if header.startswith("Bearer ") else "").encode()
    found: frozenset[str] = frozenset()
    for token, grants in tokens.items():
        if hmac.compare_digest(presented, token.encode()):
            found = grants
    return found


def _refused(request: web.Request, need: str) -> web.Response | None:
    """None when the request's token grants `need` (read | submit); else the 401 or 403 answer."""
    grants = _grants(request)
    if not grants:
        return error("unauthorized", "a valid API bearer token is required")
    if need not in grants:
        return error("forbidden", f"this token's role may not {need} (DVP_API_TOKENS: read, submit, operator)")
    return None


def _read_refused(request: web.Request) -> web.Response | None:
    return _refused(request, "read") if request.app[READ_AUTH] else None


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure is a JSON error; an unexpected exception is a 500 without internals."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error("body_too_large", f"request body over {MAX_BULK_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            resp = error(exc.reason.lower().replace(" ", "_"), exc.reason, exc.status)
            if "Allow" in exc.headers:  # a 405 says which methods the path takes
                literal = sorted({m for m, path, _ in ROUTES if path == request.path})  # not a {trade_id} match
                resp.headers["Allow"] = ",".join(literal) if literal else exc.headers["Allow"]
            return resp
        raise
    except RelayerError as exc:
        return error(exc.code, str(exc))
    except (LedgerError, RedisError, OSError) as exc:  # a chain or Redis is down right now: retry later
        get_logger().warning("api_dependency_unavailable", path=request.path, error_type=type(exc).__name__)
        resp = error("dependency_unavailable", "a chain or Redis is not answering; retry shortly", 503)
        resp.headers["Retry-After"] = "1"
        return resp
    except Exception:  # noqa: BLE001
        get_logger().exception("api_error", path=request.path)
        return error("internal", "internal error", 500)


async def _json_body(request: web.Request, limit: int, need: str = "submit") -> Any:
    """The request's JSON document, or an error Response (auth, shutdown, type, size, nesting, syntax)."""
    if (refused := _refused(request, need)) is not None:
        return refused
    if not request.app[ACCEPTING]["on"]:
        return error("shutting_down", "this worker is shutting down; retry on another")
    if request.content_type != "application/json":
        return error("invalid_json", "Content-Type must be application/json", 415)
    body = await request.read()
    if len(body) > limit:
        return error("body_too_large", f"request body over {limit} bytes")
    if json_nesting_depth(body) > MAX_JSON_DEPTH:
        return error("invalid_json", f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_float=Decimal)  # exact: an amount is never rounded through a float
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error("invalid_json", f"body is not JSON: {exc}")


async def post_trade(request: web.Request) -> web.Response:
    doc = await _json_body(request, MAX_BODY)
    if isinstance(doc, web.Response):
        return doc
    signed = parse_signed(doc)
    try:
        created, rec = await request.app[READ_MODEL].accept(signed)
    except ConflictingInstruction as exc:
        return error(exc.code, str(exc))
    return web.json_response(Accepted(trade_id=rec.trade_id, state=rec.state, created=created).model_dump(mode="json"),
                             status=202)


async def post_trades_bulk(request: web.Request) -> web.Response:
    """Many signed instructions at once: each is checked and answered on its own, the valid ones are written in
    one pipelined round trip. 200 with one result per instruction, in order."""
    doc = await _json_body(request, MAX_BULK_BODY)
    if isinstance(doc, web.Response):
        return doc
    items = doc.get("trades") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK or set(doc) != {"trades"} \
            or not all(isinstance(item, dict) for item in items):
        return error("invalid_field", f"body must be {{\"trades\": [1 to {MAX_BULK} JSON objects, each a signed "
                                      "instruction]}}")
    results: list[BulkItem | None] = [None] * len(items)
    parsed: list[tuple[int, Any]] = []
    for i, item in enumerate(items):
        try:
            parsed.append((i, parse_signed(item)))
        except RelayerError as exc:
            results[i] = BulkItem(index=i, error=exc.code, message=str(exc))
    model = request.app[READ_MODEL]
    outcomes = await model.accept_many([s for _, s in parsed])
    states = await model.states([s.instruction.tradeId for (_, s), o in zip(parsed, outcomes)
                                 if not isinstance(o, Exception)])
    for (i, s), outcome in zip(parsed, outcomes):
        tid = s.instruction.tradeId
        if isinstance(outcome, RelayerError):
            results[i] = BulkItem(index=i, trade_id=tid, error=outcome.code, message=str(outcome))
        else:
            results[i] = BulkItem(index=i, trade_id=tid, state=states.get(tid), created=outcome)
    done = [r for r in results if r is not None]
    return web.json_response(BulkResult(results=done).model_dump(mode="json", exclude_none=True))


def _legs(audit: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    legs: dict[str, dict[str, Any]] = {"st": {}, "sc": {}}
    for entry in audit:
        ev = entry.get("event") or ""
        for action in ("lock", "claim", "refund"):
            for leg in ("st", "sc"):
                if ev.startswith(f"{action}_{leg}_"):
                    slot = legs[leg].setdefault(action, {})
                    if ev.endswith("_sent"):
                        slot["tx"] = entry.get("tx")
                    elif ev.endswith("_mined"):
                        slot.update(tx=entry.get("tx"), block=entry.get("block"), gas=entry.get("gas"))
    return legs


def trade_summary(rec: TradeRecord, audit: list[dict[str, Any]], now_st: int, now_sc: int) -> TradeSummary:
    """The public view of a trade: never the secret, never keys."""
    t_st = rec.get_int("st_timelock") or rec.get_int("t_st")
    t_sc = rec.get_int("sc_timelock") or rec.get_int("t_sc")
    return TradeSummary.model_validate({
        "trade_id": rec.trade_id,
        "state": rec.state,
        "instruction": rec.signed.instruction,
        "created_at": float(rec.fields["created_at"]),
        "hashlock": ("0x" + rec.fields["hashlock"]) if rec.get("hashlock") else None,
        "timelocks": {
            "st": t_st, "sc": t_sc,
            "st_seconds_left": (t_st - now_st) if t_st else None,
            "sc_seconds_left": (t_sc - now_sc) if t_sc else None,
        },
        "legs": _legs(audit),
    })


def trade_document(rec: TradeRecord, audit: list[dict[str, Any]], now_st: int, now_sc: int) -> dict[str, Any]:
    """One trade with its audit trail, as GET /v1/trades/{id} answers it."""
    summary = trade_summary(rec, audit, now_st, now_sc)
    return TradeDocument(**dict(summary), timeline=audit).model_dump(mode="json")


async def get_trade(request: web.Request) -> web.Response:
    if (refused := _read_refused(request)) is not None:
        return refused
    model = request.app[READ_MODEL]
    trade_id = _trade_id(request)
    if isinstance(trade_id, web.Response):
        return trade_id
    found = await model.trade(trade_id)
    if found is None:
        return error("not_found", "no such trade")
    return web.json_response(trade_document(*found, *model.clocks(found[0])))


async def list_trades(request: web.Request) -> web.Response:
    if (refused := _read_refused(request)) is not None:
        return refused
    model = request.app[READ_MODEL]
    paging = _paging(request, 50)
    if isinstance(paging, web.Response):
        return paging
    offset, limit, state = paging
    items = [trade_summary(rec, audit, *model.clocks(rec)) for rec, audit in await model.page(offset, limit, state)]
    return web.json_response(TradeList(items=items, offset=offset, limit=limit).model_dump(mode="json"))


def _trade_id(request: web.Request) -> str | web.Response:
    trade_id = request.match_info["trade_id"].lower()
    if not _TRADE_ID.match(trade_id):
        return error("invalid_field", "trade_id must be 0x followed by 64 hex digits")
    return trade_id


async def get_lock_request(request: web.Request) -> web.Response:
    """What the holder of one leg's account should sign (EIP-712 Lock, and a Permit when needed)."""
    if (refused := _read_refused(request)) is not None:
        return refused
    trade_id = _trade_id(request)
    if isinstance(trade_id, web.Response):
        return trade_id
    leg = request.match_info["leg"]
    if leg not in (*LEGS, "dvp"):
        return error("invalid_field", 'leg must be "st", "sc" or "dvp"')
    if leg == "dvp" and (refused := _refused(request, "submit")) is not None:
        return refused  # it hands out the parties' settlement signatures
    doc = await request.app[READ_MODEL].lock_request(trade_id, leg)
    if doc is None:
        return error("not_found", "no such trade")
    model = DvpRequest if leg == "dvp" else LockRequest
    return web.json_response(model(**doc).model_dump(mode="json", exclude_none=True))


async def post_authorization(request: web.Request) -> web.Response:
    """A holder's signed lock for one leg: checked against the trade and kept; the relayer sends it when due."""
    doc = await _json_body(request, MAX_BODY)
    if isinstance(doc, web.Response):
        return doc
    trade_id = _trade_id(request)
    if isinstance(trade_id, web.Response):
        return trade_id
    auth = parse_authorization(doc)
    created = await request.app[READ_MODEL].authorize(trade_id, auth)
    if created is None:
        return error("not_found", "no such trade")
    return web.json_response(AuthorizationAccepted(trade_id=trade_id, leg=auth.leg, created=created).model_dump(),
                             status=202)


def _actor(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return token_actor(header[7:] if header.startswith("Bearer ") else "")


async def get_intake(request: web.Request) -> web.Response:
    """Whether intake is paused, by whom and why (read role)."""
    if (refused := _read_refused(request)) is not None:
        return refused
    state = await request.app[READ_MODEL].operator.intake_pause(fresh=True)
    return web.json_response(IntakeStatus(paused=state is not None, **(state or {})).model_dump())


async def post_intake(request: web.Request) -> web.Response:
    """An operator pauses or resumes intake for every worker sharing this Redis (operator role)."""
    doc = await _json_body(request, MAX_BODY, need="operator")
    if isinstance(doc, web.Response):
        return doc
    body = validated(IntakeControl, doc)
    desk = request.app[READ_MODEL].operator
    if body.paused:
        await desk.pause_intake(_actor(request), body.reason)
    else:
        await desk.resume_intake(_actor(request))
    state = await desk.intake_pause(fresh=True)
    return web.json_response(IntakeStatus(paused=state is not None, **(state or {})).model_dump())


async def post_cancel(request: web.Request) -> web.Response:
    """An operator cancels a MATCHED trade nothing was locked for (operator role): ABORTED, with who did it."""
    got = await _operator_trade_body(request, CancelBody)
    if isinstance(got, web.Response):
        return got
    trade_id, body = got
    state = await request.app[READ_MODEL].cancel(trade_id, _actor(request), body.reason)
    return web.json_response(Cancelled(trade_id=trade_id, state=state).model_dump(mode="json"))


def _paging(request: web.Request, default_limit: int) -> tuple[int, int, str | None] | web.Response:
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(default_limit)))
    except ValueError:
        return error("invalid_field", "offset and limit must be integers")
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= MAX_LIMIT:
        return error("invalid_field", f"offset must be between 0 and {MAX_OFFSET}, limit between 1 and {MAX_LIMIT}")
    state = request.query.get("state")
    if state is not None and state not in TradeState.__members__:
        return error("invalid_field", f"unknown state {state!r}")
    return offset, limit, state


async def get_overview(request: web.Request) -> web.Response:
    """Everything the dashboard shows in one call: totals by state from the store, the health strip, and a page of
    trades with why each waits and its tokens by name (read role)."""
    if (refused := _read_refused(request)) is not None:
        return refused
    paging = _paging(request, 200)
    if isinstance(paging, web.Response):
        return paging
    offset, limit, state = paging
    model = request.app[READ_MODEL]
    items = []
    for rec, audit in await model.page(offset, limit, state):
        summary = trade_summary(rec, audit, *model.clocks(rec))
        waiting = model.waiting(rec)
        items.append(TradeView(**dict(summary), waiting=waiting.__dict__ if waiting else None,
                               watch_only=rec.get("watch_only"), tokens=await model.tokens(rec),
                               audit_entries=len(audit)))
    health = await model.health(request.app[MAX_LAG_BLOCKS])
    health["ready"] = health["ready"] and request.app[ACCEPTING]["on"]
    doc = Overview(totals=await model.store.state_counts(), health=health, trades=items, offset=offset, limit=limit,
                   state=state, now=time.time())
    return web.json_response(doc.model_dump(mode="json"))


async def _operator_trade_body(request: web.Request, model: type[CancelBody] | type[OperatorNote] = OperatorNote
                               ) -> tuple[str, CancelBody | OperatorNote] | web.Response:
    """An operator action on one trade: its id and its body (the reason), or the error answer."""
    doc = await _json_body(request, MAX_BODY, need="operator")
    if isinstance(doc, web.Response):
        return doc
    trade_id = _trade_id(request)
    if isinstance(trade_id, web.Response):
        return trade_id
    return trade_id, validated(model, doc)


async def post_watch_only(request: web.Request) -> web.Response:
    """Mark a trade this relayer holds no party's key for as watch-only (operator role), visibly and audited."""
    got = await _operator_trade_body(request)
    if isinstance(got, web.Response):
        return got
    trade_id, body = got
    state = await request.app[READ_MODEL].mark_watch_only(trade_id, _actor(request), body.reason)
    return web.json_response(OperatorDone(trade_id=trade_id, action="watch_only", state=state).model_dump(mode="json"))


async def post_redrive(request: web.Request) -> web.Response:
    """Have the worker driving a trade read both its chains again and decide it again (operator role): 202, the
    re-drive shows in the trade's audit trail once done."""
    got = await _operator_trade_body(request)
    if isinstance(got, web.Response):
        return got
    trade_id, body = got
    model = request.app[READ_MODEL]
    await model.operator.request_redrive(trade_id, _actor(request), body.reason)
    rec = await model.store.get(trade_id)
    assert rec is not None
    return web.json_response(OperatorDone(trade_id=trade_id, action="redrive", state=rec.state).model_dump(mode="json"),
                             status=202)


async def get_sweep(request: web.Request) -> web.Response:
    """The refund sweep an operator asked for, pending or last run (read role)."""
    if (refused := _read_refused(request)) is not None:
        return refused
    return web.json_response(SweepStatus(**await request.app[READ_MODEL].operator.sweep_status()).model_dump())


async def post_sweep(request: web.Request) -> web.Response:
    """Run the refund sweep now and decide every trade again (operator role): 202; GET shows its outcome."""
    doc = await _json_body(request, MAX_BODY, need="operator")
    if isinstance(doc, web.Response):
        return doc
    validated(OperatorNote, doc)
    desk = request.app[READ_MODEL].operator
    await desk.request_sweep(_actor(request))
    return web.json_response(SweepStatus(**await desk.sweep_status()).model_dump(), status=202)


async def get_report(request: web.Request) -> web.Response:
    """`dvp-relayer report` over HTTP: the trades accepted in [from, to) as CSV or JSON, optionally verified
    against both chains (read role)."""
    if (refused := _read_refused(request)) is not None:
        return refused
    try:
        start, end = (rpt.parse_when(request.query.get(k, "")) for k in ("from", "to"))
    except rpt.ImpossibleDate as exc:
        return error("invalid_range", f"from and to: {exc}")
    except rpt.BadRange as exc:
        return error("invalid_field", f"from and to: {exc}")
    fmt, verify = request.query.get("format", "json"), request.query.get("verify", "false")
    if fmt not in ("csv", "json") or verify not in ("true", "false"):
        return error("invalid_field", "format must be csv or json, verify true or false")
    model = request.app[READ_MODEL]
    try:
        trades = await rpt.trades_between(model.store, start, end)
    except rpt.TooManyRows as exc:
        return error("invalid_range", str(exc))
    rows = await rpt.build_rows(model.routes, trades)
    if verify == "true":
        await rpt.verify(model.routes, rows, trades)
    return web.Response(text=rpt.render(rows, fmt), content_type="text/csv" if fmt == "csv" else "application/json")


async def get_dead_letters(request: web.Request) -> web.Response:
    """Webhook events that could not be delivered after every attempt (operator role)."""
    if (refused := _refused(request, "operator")) is not None:
        return refused
    events = await dead_letters(request.app[READ_MODEL].store)
    return web.json_response(DeadLetters(events=events).model_dump())


async def healthz(_: web.Request) -> web.Response:
    return web.json_response(Health(status="ok").model_dump())


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis and every ledger answer and every follower is within the lag bound."""
    checks = await request.app[READ_MODEL].readiness(request.app[MAX_LAG_BLOCKS])
    ready = all(v is True for v in checks.values()) and request.app[ACCEPTING]["on"]
    return web.json_response(Readiness(ready=ready, checks=checks).model_dump(), status=200 if ready else 503)


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def dashboard(_: web.Request) -> web.Response:
    html = resources.files("relayer").joinpath("dashboard.html").read_text()
    return web.Response(text=html, content_type="text/html")


ROUTES = [
    ("POST", "/v1/trades", post_trade),
    ("POST", "/v1/trades/bulk", post_trades_bulk),
    ("GET", "/v1/trades", list_trades),
    ("GET", "/v1/trades/{trade_id}", get_trade),
    ("POST", "/v1/trades/{trade_id}/authorizations", post_authorization),
    ("GET", "/v1/trades/{trade_id}/authorizations/{leg}", get_lock_request),
    ("GET", "/v1/operator/intake", get_intake),
    ("POST", "/v1/operator/intake", post_intake),
    ("POST", "/v1/trades/{trade_id}/cancel", post_cancel),
    ("POST", "/v1/trades/{trade_id}/watch-only", post_watch_only),
    ("POST", "/v1/trades/{trade_id}/redrive", post_redrive),
    ("GET", "/v1/operator/sweep", get_sweep),
    ("POST", "/v1/operator/sweep", post_sweep),
    ("GET", "/v1/overview", get_overview),
    ("GET", "/v1/operator/webhooks/dead", get_dead_letters),
    ("GET", "/v1/reports", get_report),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics_handler),
    ("GET", "/openapi.json", openapi),
    ("GET", "/", dashboard),
]


def make_app(model: ReadModel, *, api_tokens: list[str] | dict[str, str], read_auth: bool = False,
             max_lag_blocks: int = 20) -> web.Application:
    """The API over a worker's read model (`Engine.read_model`). api_tokens: token -> role (read, submit,
    operator), or a list of operator tokens."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BULK_BODY)
    app[READ_MODEL] = model
    roles = api_tokens if isinstance(api_tokens, dict) else dict.fromkeys(api_tokens, "operator")
    app[API_TOKENS] = {t: API_ROLES[role] for t, role in roles.items() if t}
    app[READ_AUTH] = read_auth
    app[ACCEPTING] = {"on": True}
    app[MAX_LAG_BLOCKS] = max_lag_blocks
    for method, path, handler in ROUTES:
        # /v1/trades/bulk is its own resource: a GET on it is 405, not a lookup of trade id "bulk"
        app.router.add_route(method, path.replace("{trade_id}", "{trade_id:(?!bulk$)[^/]+}"), handler)
    return app
