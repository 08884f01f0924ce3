"""One worker process: the engine loop plus (optionally) the HTTP API, with graceful shutdown."""

from __future__ import annotations

import asyncio

from aiohttp import web

from relayer.api import ACCEPTING, make_app
from relayer.config import Settings
from relayer.engine import Engine
from relayer.service import build_engine, close_engine


async def serve(settings: Settings, stop: asyncio.Event, engine: Engine | None = None) -> None:
    """Run until `stop` is set. Shutdown order: refuse new trades, finish the round and in-flight sends,
    close the API, close connections. Every trade is left in a state the next start resumes."""
    engine = engine or build_engine(settings)
    runner: web.AppRunner | None = None
    app: web.Application | None = None
    if settings.api_port:
        app = make_app(engine.read_model, api_tokens=settings.api_token_roles(), read_auth=settings.api_read_auth,
                       max_lag_blocks=settings.api_max_lag_blocks)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.api_host, settings.api_port).start()
        engine.log.info("api_listening", host=settings.api_host, port=settings.api_port)
    try:
        await engine.run(stop)
    finally:
        if app is not None:
            app[ACCEPTING]["on"] = False
        await engine.drain()
        if runner is not None:
            await runner.cleanup()
        await close_engine(engine)
        engine.log.info("worker_stopped")
