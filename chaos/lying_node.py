"""An RPC endpoint that answers but lies, as an HTTP proxy in front of a real node (the chaos run and the tests).

Frozen: eth_blockNumber and eth_getBlockByNumber("latest"/"pending"/"safe"/"finalized") keep answering the head
as it was when frozen, while the chain moves on (a node stuck on its fork or out of sync). Dropping logs: every
eth_getLogs answers no logs (a node that lost its log index); dropping topics: it answers without the logs whose
first topic is one of `drop_topics` (an index that lost one event kind). Hiding in blooms: block headers answer
with an empty logs bloom, so the headers do not give the dropped logs away either (the relayer's last line of
defence, its escrow-slot reads, is what is left). Everything else is forwarded as it is.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from deploy.processes import free_port

_HEAD_METHODS = {"eth_blockNumber", "eth_getBlockByNumber"}


class LyingNode:
    """Forwards JSON-RPC to `upstream`; `frozen` (a block number) and `drop_logs` make it lie."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.frozen: int | None = None
        self.drop_logs = False
        self.drop_topics: set[str] = set()  # 0x-hex event signatures (lower case) left out of eth_getLogs answers
        self.hide_in_blooms = False  # headers' logsBloom answered empty
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.url = ""

    async def _one(self, doc: dict[str, Any]) -> Any:
        method, params = doc.get("method"), doc.get("params") or []
        if self.drop_logs and method == "eth_getLogs":
            return {"jsonrpc": "2.0", "id": doc.get("id"), "result": []}
        if self.frozen is not None and method in _HEAD_METHODS:
            if method == "eth_blockNumber":
                return {"jsonrpc": "2.0", "id": doc.get("id"), "result": hex(self.frozen)}
            if params and params[0] in ("latest", "pending", "safe", "finalized"):
                doc = {**doc, "params": [hex(self.frozen), *params[1:]]}
        assert self.http is not None
        async with self.http.post(self.upstream, json=doc) as r:
            out = await r.json(content_type=None)
        if self.hide_in_blooms and method == "eth_getBlockByNumber" and isinstance(out.get("result"), dict):
            out["result"]["logsBloom"] = "0x" + "00" * 256
        if self.drop_topics and method == "eth_getLogs" and isinstance(out.get("result"), list):
            out["result"] = [lg for lg in out["result"] if (lg.get("topics") or [""])[0].lower() not in self.drop_topics]
        return out

    async def handle(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        try:
            out: Any = [await self._one(d) for d in doc] if isinstance(doc, list) else await self._one(doc)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return web.Response(status=502, text="upstream unreachable")  # the path behind it is down
        return web.json_response(out)

    async def start(self) -> LyingNode:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()
