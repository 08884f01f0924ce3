"""Rotating DVP_SECRET_KEY without aborting a trade: the open trades' sealed secrets are re-sealed under the
current key while the older key still opens them (relayer/secrets.py names the key in every sealed secret)."""

from __future__ import annotations

from typing import Any

from relayer.errors import ConcurrentUpdate
from relayer.secrets import SecretBox, SecretDecryptError
from relayer.store import Store

ACTOR = "keys-rotate"


async def reseal_open_trades(store: Store, box: SecretBox, attempts: int = 5) -> dict[str, Any]:
    """Re-seal every open trade's secret under the box's current key. A record a worker changes meanwhile is read
    again (compare-and-set); a secret no configured key opens is reported, never dropped."""
    resealed = current = 0
    unopened: list[str] = []
    busy: list[str] = []  # changed by a worker on every attempt: run the rotation again
    for trade_id in await store.open_trades():
        for _ in range(attempts):
            rec = await store.get(trade_id)
            sealed = rec.get("secret") if rec is not None else None
            if rec is None or not sealed:
                break
            try:
                fresh = box.reseal(sealed, trade_id)
            except SecretDecryptError:
                unopened.append(trade_id)
                break
            if fresh is None:
                current += 1
                break
            try:
                await store.update(rec, {"secret": fresh}, actor=ACTOR, event="secret_resealed",
                                   key_id=box.current_id, was=box.sealed_with(sealed) or "unnamed")
                resealed += 1
                break
            except ConcurrentUpdate:
                continue
        else:
            busy.append(trade_id)
    return {"key_id": box.current_id, "resealed": resealed, "already_current": current, "unopened": unopened,
            "busy": busy}
