"""A TCP proxy the fault harness owns, between a worker and one node: it passes bytes through, or delays them,
blackholes them (connections stay open, nothing comes back: a half-open path), or resets every connection.

Faults a stopped process cannot show: a request that hangs instead of failing at once is what bounds every RPC
call by a timeout, and a path that drops one direction is what a firewall or a broken NAT does.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

PASS, DELAY, BLACKHOLE, RESET = "pass", "delay", "blackhole", "reset"


@dataclass
class NetProxy:
    """Listens on 127.0.0.1:`port` and forwards to `upstream_host`:`upstream_port` in the current `mode`."""

    upstream_host: str
    upstream_port: int
    port: int
    mode: str = PASS
    latency: float = 0.0  # seconds added to each chunk in DELAY mode
    jitter: float = 0.0  # plus up to this much, at random
    connections: int = 0  # accepted so far
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> NetProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._open):
                w.close()
            await self._server.wait_closed()
            self._server = None

    def set(self, mode: str, latency: float = 0.0, jitter: float = 0.0) -> None:
        """Change the fault now; RESET and BLACKHOLE also cut the connections already open (a node's keep-alive
        connections would otherwise keep working through a new fault)."""
        self.mode, self.latency, self.jitter = mode, latency, jitter
        if mode in (RESET, BLACKHOLE):
            for w in list(self._open):
                w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == RESET:
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            if self.mode == BLACKHOLE:
                while await reader.read(65536):  # swallow the request, answer nothing, keep the socket open
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            self._open.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._open.discard(up_writer)
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while True:
            chunk = await src.read(65536)
            if not chunk:
                dst.write_eof() if dst.can_write_eof() else None
                return
            if self.mode == BLACKHOLE:
                continue  # the path went dark mid-connection: bytes vanish
            if self.mode == DELAY:
                await asyncio.sleep(self.latency + random.uniform(0, self.jitter))
            dst.write(chunk)
            await dst.drain()
