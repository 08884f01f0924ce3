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
# credentials inside a URL (redis://user:password@host, https://user:key@node): the part before @ is hidden
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k in list(event_dict):
        if k.lower() in REDACTED_KEYS:
            event_dict[k] = "[redacted]"
        elif isinstance(event_dict[k], str) and "@" in event_dict[k]:
            event_dict[k] = _URL_CREDENTIALS.sub(r"\1[redacted]@", event_dict[k])
    return event_dict


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or `stream`), ISO timestamps, context vars merged, secrets redacted."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("dvp-relayer").bind(**bound)
