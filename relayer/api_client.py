"""A client of a worker's HTTP API, for the CLI (`submit`, `status`): the CLI goes through the API, never around it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from relayer.config import Settings


class ApiUnreachable(Exception):
    """Raised when no worker API answers at the configured address."""


@dataclass
class ApiClient:
    base_url: str
    token: str = ""
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, token: str | None = None) -> ApiClient:
        """The worker these settings describe: DVP_API_HOST:DVP_API_PORT, the first of DVP_API_TOKENS."""
        host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
        tokens = settings.api_token_list()
        return cls(url or f"http://{host}:{settings.api_port}", token if token is not None else
                   (tokens[0] if tokens else ""))

    async def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
                async with http.request(method, self.base_url.rstrip("/") + path, data=body, headers=headers) as r:
                    return r.status, await r.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ApiUnreachable(f"no worker API answers at {self.base_url} ({type(exc).__name__}); is "
                                 "`dvp-relayer run` running with DVP_API_PORT set?") from exc

    async def submit(self, body: bytes) -> tuple[int, Any]:
        """POST /v1/trades: (status, JSON answer)."""
        return await self._request("POST", "/v1/trades", body)

    async def trade(self, trade_id: str) -> tuple[int, Any]:
        """GET /v1/trades/{id}: (status, JSON answer)."""
        return await self._request("GET", f"/v1/trades/{trade_id}")

    async def intake(self, paused: bool | None = None, reason: str = "") -> tuple[int, Any]:
        """GET /v1/operator/intake, or POST it to pause (True) or resume (False)."""
        if paused is None:
            return await self._request("GET", "/v1/operator/intake")
        return await self._request("POST", "/v1/operator/intake",
                                   json.dumps({"paused": paused, "reason": reason}).encode())

    async def cancel(self, trade_id: str, reason: str) -> tuple[int, Any]:
        """POST /v1/trades/{id}/cancel."""
        return await self._request("POST", f"/v1/trades/{trade_id}/cancel", json.dumps({"reason": reason}).encode())

    async def trade_action(self, trade_id: str, action: str, reason: str) -> tuple[int, Any]:
        """POST /v1/trades/{id}/{action}: watch-only or redrive."""
        return await self._request("POST", f"/v1/trades/{trade_id}/{action}", json.dumps({"reason": reason}).encode())

    async def sweep(self, run: bool) -> tuple[int, Any]:
        """POST /v1/operator/sweep (run it now) or GET it (pending and last)."""
        if run:
            return await self._request("POST", "/v1/operator/sweep", b"{}")
        return await self._request("GET", "/v1/operator/sweep")
