"""Concurrent calls of one batch function, joined into batches (intake's single submissions, state writes).

Each call's item waits while a batch is in flight and goes in the next; each caller gets its own result, and an
exception result is raised for that caller alone. Callers that arrive in the same moment cost one batch: a PTS
that sends trades one request at a time, many at once, costs what its bulk request would, and the state writes
of 32 trades decided together cost one Redis round trip.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any


class Together:
    """Joins concurrent `submit(item)` calls into `run(items)` calls of at most `most` items."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], most: int) -> None:
        self.run = run
        self.most = most
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.task.get_loop() is not loop:
            self.task, self.waiting = None, []  # left by an event loop that is gone (tests run one loop each)
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((item, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        result = await future
        if isinstance(result, BaseException):
            raise copy.copy(result)  # each caller its own exception object (and its own traceback)
        return result

    async def _drain(self) -> None:
        while self.waiting:
            await asyncio.sleep(0)  # calls arriving in this same moment join the batch
            batch, self.waiting = self.waiting[:self.most], self.waiting[self.most:]
            try:
                results = await self.run([item for item, _ in batch])
            except BaseException as exc:  # the whole batch failed (Redis down, not ready): each caller hears it
                results = [exc] * len(batch)
                if not isinstance(exc, Exception):  # cancelled (shutdown): answer every caller, then stop
                    batch, self.waiting = batch + self.waiting, []
                    self._answer(batch, [exc] * len(batch))
                    raise
            self._answer(batch, results)

    @staticmethod
    def _answer(batch: list[tuple[Any, asyncio.Future[Any]]], results: list[Any]) -> None:
        for (_, future), result in zip(batch, results):
            if not future.done():  # a caller that went away (client disconnected) is skipped
                future.set_result(result)
