"""structlog JSON logs; every line of a trade carries its trade_id. Secret-bearing keys are dropped."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED_KEYS = frozenset({"secret", "preimage", "private_key", "key", "party_keys", "secret_key", "sealed",
                           "signature_key", "raw", "pin", "passphrase", "signers", "previous_secret_keys",
                           "authorization", "rpc_auth", "auth_header", "api_tokens", "token", "password"})
# a URL's credentials: its user-info (redis://user:password@host, https://user:key@node, up to the last @ as URL
# parsers read it) and everything after the host (node providers put API keys in the path,
# https://mainnet.infura.io/v3/<key>, or in the query, ?apikey=). scheme://host:port is kept, and the rest becomes
# a short digest, so an operator still tells two endpoints on one host apart. Applied to the rendered JSON line:
# every value, whatever its type (an exception's repr, a dict, a traceback), and a `"` or `\` ends a URL there.
_URL = re.compile(
    r"\b([a-z][a-z0-9+.-]*://)"  # scheme
    r"([^/?#\s\"\\]*@)?"  # user-info
    r"([^/@\s?#'\"<>\\]*)"  # host[:port], may be empty (unix:///run/redis.sock)
    r"([^\s'\"<>\\]*[^\s'\"<>\\.,;:!?)\]}])?",  # path, query, fragment, without a trailing punctuation mark
    re.IGNORECASE)


def _hide_url_secrets(text: str) -> str:
    if "://" not in text:
        return text

    def hide(m: re.Match[str]) -> str:
        rest = m.group(4) or ""
        if rest not in ("", "/") and not rest.startswith("/[redacted"):
            rest = f"/[redacted:{hashlib.sha256(rest.encode()).hexdigest()[:6]}]"
        return m.group(1) + ("[redacted]@" if m.group(2) else "") + m.group(3) + rest
    return _URL.sub(hide, text)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k in list(event_dict):
        if k.lower() in REDACTED_KEYS:
            event_dict[k] = "[redacted]"
    return event_dict


def _render(obj: Any, **kw: Any) -> str:
    return _hide_url_secrets(json.dumps(obj, **kw))


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or `stream`), ISO timestamps, context vars merged, secrets redacted."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(serializer=_render),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("dvp-relayer").bind(**bound)


class OutageLog:
    """One warning when rounds start failing, then one every `every` seconds with how many failed since, and one
    info line when a round succeeds again: a Redis failover must not write ten warnings a second."""

    def __init__(self, log: Any, event: str, every: float = 10.0) -> None:
        self.log, self.event, self.every = log, event, every
        self.since: float | None = None  # monotonic time of the first failure of this outage
        self.last_logged = 0.0
        self.last_type = ""  # a new kind of error is said at once
        self.failed = 0  # failures since the last line

    def failed_now(self, exc: BaseException, now: float) -> None:
        self.failed += 1
        kind = type(exc).__name__
        if self.since is None or now - self.last_logged >= self.every or kind != self.last_type:
            self.log.warning(self.event, error=str(exc), error_type=kind, failed=self.failed,
                             failing_for_s=0.0 if self.since is None else round(now - self.since, 1))
            self.since = self.since if self.since is not None else now
            self.last_logged, self.last_type, self.failed = now, kind, 0

    def ok_now(self, now: float) -> None:
        if self.since is not None:
            self.log.info(f"{self.event}_recovered", failing_for_s=round(now - self.since, 1),
                          failed_since_last_line=self.failed)
        self.since, self.last_type, self.failed = None, "", 0
