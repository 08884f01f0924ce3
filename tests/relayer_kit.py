"""A real two-chain devnet for relayer tests: two anvils, a throw-away Redis, deployed contracts, engines."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from collections.abc import AsyncIterator
from typing import Any

from adapters.contracts import encode_call
from adapters.evm import EvmChain, TxSender
from deploy.devnet import ROLES, dev_account
from relayer.config import Settings
from relayer.engine import Engine
from relayer.protocol.instruction import SignedInstruction, TradeInstruction, sign_instruction
from relayer.protocol.states import TERMINAL, TradeState
from relayer.secrets import generate_key
from relayer.service import build_engine, close_engine
from relayer.store import Store

# a database of its own for every engine (0 and 1 are for the tests that name them)
_db = itertools.count(2)
TEST_DATABASES = 2048


def fresh_db() -> int:
    """A Redis database no engine of this session used: no trade, cursor or lease of another test in it."""
    return next(_db) % TEST_DATABASES


@dataclass
class Net:
    doc: dict[str, Any]
    redis_port: int
    st: EvmChain
    sc: EvmChain
    secret_key: str
    domain_salt: bytes = field(default_factory=lambda: os.urandom(32))  # this devnet's instruction domain

    @property
    def seller(self) -> Any:
        return dev_account(ROLES["seller"])

    @property
    def buyer(self) -> Any:
        return dev_account(ROLES["buyer"])

    @property
    def pts(self) -> Any:
        return dev_account(ROLES["pts"])

    @property
    def st_token(self) -> str:
        return next(iter(self.doc["st"]["tokens"].values()))

    @property
    def sc_token(self) -> str:
        return next(iter(self.doc["sc"]["tokens"].values()))

    def settings(self, party_keys: list[Any], db: int | None = None, **over: Any) -> Settings:
        fields: dict[str, Any] = dict(
            redis_url=f"redis://127.0.0.1:{self.redis_port}/{db if db is not None else fresh_db()}",
            st_rpc_url=self.doc["st"]["rpc_url"], st_escrow=self.doc["st"]["escrow"],
            st_tokens=self.st_token, st_start_block=self.doc["st"]["deploy_block"],
            sc_rpc_url=self.doc["sc"]["rpc_url"], sc_escrow=self.doc["sc"]["escrow"],
            sc_tokens=self.sc_token, sc_start_block=self.doc["sc"]["deploy_block"],
            trusted_pts_signers=self.pts.address, pts_domain_salt="0x" + self.domain_salt.hex(),
            party_keys=",".join(k.key.hex() for k in party_keys),
            secret_key=self.secret_key, confirmations=1, block_time=0.5, inclusion_delay=2.0, margin=3.0,
            st_lock_duration=120, poll_interval=0.05, api_port=0,
        )
        if "config_file" in over:  # the ledgers come from the file: no DVP_ST_* / DVP_SC_* override them
            fields = {k: v for k, v in fields.items() if not k.startswith(("st_", "sc_"))}
        fields.update(over)
        return Settings(_env_file=None, **fields)  # type: ignore[call-arg]

    async def engine(self, party_keys: list[Any], **over: Any) -> Engine:
        settings = self.settings(party_keys, **over)
        store = Store.from_url(settings.redis_url)
        engine = build_engine(settings, store)
        await engine.start()
        return engine

    async def instruction(self, **over: Any) -> SignedInstruction:
        key = over.pop("pts_key", self.pts.key)
        salt = over.pop("salt", self.domain_salt)
        now = await self.st.now()
        fields: dict[str, Any] = dict(
            tradeId="0x" + os.urandom(32).hex(), stChainId=self.doc["st"]["chain_id"], stToken=self.st_token,
            stAmount=10, scChainId=self.doc["sc"]["chain_id"], scToken=self.sc_token, scAmount=12_345,
            sellerStAccount=self.seller.address, sellerScAccount=self.seller.address,
            buyerScAccount=self.buyer.address, buyerStAccount=self.buyer.address, deadline=now + 300,
        )
        fields.update(over)
        return sign_instruction(TradeInstruction(**fields), key, salt)

    async def warp(self, seconds: int) -> None:
        """Advance both chains' clocks and mine a block on each."""
        for chain in (self.st, self.sc):
            await chain.rpc("evm_increaseTime", [seconds])
            await chain.rpc("evm_mine", [])

    async def reorg(self, chain: EvmChain, depth: int) -> None:
        """anvil_reorg `depth` blocks, then put that chain's clock back beside the other's: anvil re-mines the
        blocks 1 s apart from the fork point, so a deep reorg leaves its chain's clock behind for good (10 s
        after a 13-block reorg at 0.5 s blocks), and the session's later trades would find the clocks too far
        apart to lock (the relayer's clock-difference gate)."""
        other = self.sc if chain is self.st else self.st
        await chain.rpc("anvil_reorg", [depth, []])
        lag = await other.now() - await chain.now()
        if lag > 0:
            await chain.rpc("evm_increaseTime", [lag])
            await chain.rpc("evm_mine", [])

    async def balance(self, chain: EvmChain, token: str, who: str) -> int:
        raw = await chain.call(lambda w3: w3.eth.call({"to": token, "data": encode_call("SecurityToken", "balanceOf", who)}))
        return int.from_bytes(bytes(raw)[-32:], "big")

    def sender(self, chain: EvmChain, acct: Any) -> TxSender:
        return TxSender(chain, acct)


async def drive(engine: Engine, trade_ids: list[str], until: frozenset[TradeState] | set[TradeState] = TERMINAL,
                timeout: float = 60.0,
                tick: Any = None) -> dict[str, TradeState]:
    """Run engine rounds until every trade reached one of `until` (or time runs out); returns their states."""
    deadline = time.monotonic() + timeout
    states: dict[str, TradeState] = {}
    while time.monotonic() < deadline:
        await engine.step()
        states = {}
        for tid in trade_ids:
            rec = await engine.store.get(tid)
            assert rec is not None
            states[tid] = rec.state
        if all(s in until for s in states.values()):
            await engine.drain()
            return states
        if tick is not None:
            await tick()
        await asyncio.sleep(0.05)
    return states


async def drive_together(engines: list[Engine], trade_id: str, until: TradeState = TradeState.SETTLED,
                         rounds: int = 600) -> set[TradeState]:
    """Rounds of several relayers (two firms) in turn until every one sees the trade in `until`; their states."""
    states: set[TradeState] = set()
    for _ in range(rounds):
        for engine in engines:
            await engine.step()
        states = {rec.state for e in engines if (rec := await e.store.get(trade_id)) is not None}
        if states == {until}:
            break
        await asyncio.sleep(0.05)
    return states


async def two_chain_net(redis_server: Any, st_standard: str, st_chain_id: int, sc_chain_id: int
                        ) -> AsyncIterator[Net]:
    """An ST chain (its token: `st_standard`) and a coin ledger, deployed and funded, as a Net; stopped after."""
    from deploy.devnet import DevnetOptions, _deploy
    from deploy.processes import AnvilProcess, free_port

    st = AnvilProcess(chain_id=st_chain_id, port=free_port(), block_time=0.5).start()
    sc = AnvilProcess(chain_id=sc_chain_id, port=free_port(), block_time=0.5).start()
    st_chain, sc_chain = EvmChain("st", [st.url]), EvmChain("sc", [sc.url])
    try:
        doc = await _deploy(DevnetOptions(st_standard=st_standard), st.url, sc.url, redis_server.url)
        await st_chain.connect()
        await sc_chain.connect()
        yield Net(doc, redis_server.port, st_chain, sc_chain, generate_key())
    finally:
        await st_chain.close()
        await sc_chain.close()
        st.stop()
        sc.stop()


@contextlib.asynccontextmanager
async def api_session(engine: Engine, token: str, tokens: dict[str, str] | None = None,
                      read_auth: bool = False) -> AsyncIterator[Any]:
    """The engine's HTTP API (relayer.api.make_app) served in this event loop on a free port, and a client session
    for it; the engine keeps being driven by the test."""
    import aiohttp
    from aiohttp import web

    from deploy.processes import free_port
    from relayer.api import make_app

    runner = web.AppRunner(make_app(engine.read_model, api_tokens=tokens or [token], read_auth=read_auth))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        await runner.cleanup()


__all__ = ["Net", "api_session", "drive", "drive_together", "close_engine", "generate_key", "two_chain_net"]


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for a `dvp-relayer run` subprocess with these settings (secrets included: test only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVP_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"DVP_{name.upper()}"] = str(value)
    env["DVP_ENV_FILE"] = "/nonexistent"
    return env


class Worker:
    """A real relayer worker process (`dvp-relayer run`), killable with SIGKILL, logs captured to a file."""

    def __init__(self, settings: Settings, log_path: Any) -> None:
        self.env = worker_env(settings)
        self.log_path = log_path
        self.proc: Any = None

    def start(self) -> Worker:
        import subprocess
        import sys
        from pathlib import Path

        exe = Path(sys.executable).with_name("dvp-relayer")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(exe), "run"], env=self.env, stdout=self._log, stderr=self._log)
        return self

    async def api_up(self, port: int, timeout: float = 30.0, ready: bool = True) -> None:
        """Wait (bounded) until the worker's API listens on `port` and, with `ready`, until /readyz says ready
        (the API listens before the engine has connected); fail if the process exits first."""
        import aiohttp

        from deploy.processes import port_open

        deadline = time.monotonic() + timeout
        while not port_open(port):
            assert time.monotonic() < deadline, f"API did not start within {timeout}s"
            assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            while ready:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
                assert time.monotonic() < deadline, f"worker not ready within {timeout}s"
                assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}"
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def terminate(self) -> int:
        self.proc.terminate()
        rc = self.proc.wait(30)
        self._log.close()
        return rc


async def submit_trades(net: Net, settings: Settings, n: int, sc_base: int) -> list[str]:
    """Accept n one-unit trades through a throw-away in-process intake (as the API would); their ids."""
    intake = build_engine(settings, Store.from_url(settings.redis_url))
    await intake.start()
    ids = []
    for i in range(n):
        signed = await net.instruction(stAmount=1, scAmount=sc_base + i)
        await intake.intake(signed)
        ids.append(signed.instruction.tradeId)
    await close_engine(intake)
    return ids


async def wait_all_settled(store: Store, ids: list[str], timeout: float) -> None:
    """Poll the records until every trade is SETTLED; fail with their states otherwise."""
    deadline = time.monotonic() + timeout
    states: dict[str, TradeState] = {}
    while time.monotonic() < deadline:
        states = {tid: (await store.get(tid)).state for tid in ids}  # type: ignore[union-attr]
        if all(s == TradeState.SETTLED for s in states.values()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not all settled within {timeout}s: {states}")


async def worker_pool(net: Net, log_dir: Any, n: int) -> tuple[Settings, Store, list[Worker]]:
    """n `dvp-relayer run` processes on one empty Redis database, holding both parties' keys (lease TTL 2 s)."""
    settings = net.settings([net.seller, net.buyer], lease_ttl=2.0)
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    return settings, store, [Worker(settings, log_dir / f"w{i}.log").start() for i in range(n)]
