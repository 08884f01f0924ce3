"""structlog JSON logs; every line of a trade carries its trade_id. Secret-bearing keys are dropped."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED_KEYS = frozenset({"secret", "preimage", "private_key", "key", "party_keys", "secret_key", "sealed",
                           "signature_key", "raw", "pin", "passphrase", "signers"})


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k in list(event_dict):
        if k.lower() in REDACTED_KEYS:
            event_dict[k] = "[redacted]"
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
