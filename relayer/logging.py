"""structlog JSON logs; every line of a trade carries its trade_id. Secret-bearing keys are dropped."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED_KEYS = frozenset({"secret", "preimage", "private_key", "key", "party_keys", "secret_key", "sealed",
                           "signature_key", "raw", "pin", "passphrase", "signers", "previous_secret_keys",
                           "authorization", "rpc_auth", "auth_header", "api_tokens", "token", "password"})
# a URL's credentials: its user-info (redis://user:password@host, https://user:key@node) and everything after the
# host (node providers put API keys in the path, https://mainnet.infura.io/v3/<key>, or in the query, ?apikey=):
# only scheme://host:port is kept, so an operator still sees which endpoint a line is about
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^/@\s'\"]*@)?([^/\s?#'\"<>]+)([^\s'\"<>]*)", re.IGNORECASE)


def _hide_url_secrets(text: str) -> str:
    def hide(m: re.Match[str]) -> str:
        rest = m.group(4)
        return (m.group(1) + ("[redacted]@" if m.group(2) else "") + m.group(3)
                + ("/[redacted]" if rest not in ("", "/") else rest))
    return _URL.sub(hide, text)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Runs after the traceback is formatted: an exception's message that names a URL is a string like any other."""
    for k in list(event_dict):
        value = event_dict[k]
        if k.lower() in REDACTED_KEYS:
            event_dict[k] = "[redacted]"
        elif isinstance(value, str) and "://" in value:
            event_dict[k] = _hide_url_secrets(value)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, str) and "://" in v for v in value):
            event_dict[k] = [_hide_url_secrets(v) if isinstance(v, str) else v for v in value]
    return event_dict


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or `stream`), ISO timestamps, context vars merged, secrets redacted."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("dvp-relayer").bind(**bound)
