"""One open-loop rate run (bench.open_loop.rate_run) on a fresh devnet, optionally with py-spy on the worker.

    .venv/bin/python scripts/open_loop_once.py RATE SECONDS [--spy OUT.txt]

Used to compare two commits side by side on a noisy machine: check the other commit out in a git worktree and
run this script there with PYTHONPATH pointing at it (the worker subprocess inherits it), interleaving the runs.
`--spy` records the worker with py-spy (raw collapsed stacks, 50 Hz) from 4 s after it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.open_loop import rate_run  # noqa: E402
from bench.runner import Bench, BenchConfig  # noqa: E402


async def _spy(out: str, seconds: float) -> None:
    while not (pid := subprocess.run(["pgrep", "-f", "dvp-relayer run"], capture_output=True,
                                     text=True).stdout.split()):
        await asyncio.sleep(0.2)
    await asyncio.sleep(4)
    spy = await asyncio.create_subprocess_exec(str(Path(sys.executable).with_name("py-spy")), "record", "-p", pid[0],
                                               "-d", str(max(1, int(seconds) - 4)), "-r", "50", "-f", "raw", "-o", out,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await spy.wait()


async def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("rate", type=float)
    args.add_argument("seconds", type=float)
    args.add_argument("--spy", default="")
    opts = args.parse_args()
    bench = Bench(BenchConfig(workdir=Path(".bench/open-loop-once")))
    await bench.setup()
    try:
        spying = asyncio.create_task(_spy(opts.spy, opts.seconds)) if opts.spy else None
        print(json.dumps(await rate_run(bench, 8, opts.rate, opts.seconds)))
        if spying is not None:
            await spying
    finally:
        await bench.teardown()


if __name__ == "__main__":
    asyncio.run(main())
