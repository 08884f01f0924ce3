"""`dvp-relayer chaos --trades N --seed S`: settle N randomized trades on a private devnet while injecting faults.

Faults (chosen by a seeded RNG, at random moments, one at a time, every kind as often):
  worker_kill       SIGKILL the relayer worker, restart it after 0.2-3 s
  chain_stop_short  stop an anvil (state kept with --state) for less than Δ (0.5 s to 0.6 Δ), restart it
  chain_stop_long   the same for longer than Δ (1.05 Δ to 1.3 Δ)
  reorg             anvil_reorg of depth < confirmations on a random chain
  redis_restart     SIGKILL redis-server (AOF appendfsync always) and restart it
  duplicate         re-post an accepted instruction (must answer 202, created=false)
  replay_conflict   post the same trade id with other terms (must answer 409)
  clock_skew        set one chain's clock 0..max_skew s ahead of wall time (evm_setTime)
Network faults between the worker and a chain (chaos/netproxy.py; the worker reaches each chain through a primary
and a standby proxy, the chain itself never stops):
  net_delay         the primary path delays every chunk 0.2-3 s (+ jitter) for a while
  net_blackhole     the primary path swallows everything, connections open (the worker must fail over)
  net_reset         the primary path resets every connection for a while
  net_partition     both paths of one chain go dark for 0.5 s to 1.3 Δ (the chain goes on producing blocks)
Per-trade counterparty behaviour (a bot holding keys the relayer does not have):
  bot_wrong_terms   the bot buyer locks SC with a wrong amount, receiver, hashlock or timelock
  bot_late_lock     the bot buyer locks SC when less than Δ is left on T_st
  bot_never_locks   the bot buyer never locks
  bot_never_claims  the bot seller locks ST and never claims the SC
  bot_late_claim    the bot seller claims the SC just before T_sc
  bot_relock        the bot buyer locks SC with a wrong amount and a short timelock, and once that lock is
                    refunded locks the same trade id again with the right terms
  bot_front_run     an honest trade, and a third party that claims the ST for the buyer with the secret the
                    seller revealed, tipping to land before the relayer's own claim
At the end every timelock is made to pass, the relayer refunds what is left, and the independent checker
(chaos.checker, chain reads only) classifies every trade. Exit status 1 on any violation or stuck trade.
"""

from __future__ import annotations

import asyncio
import shutil
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from adapters.contracts import encode_call, swap_id
from adapters.evm import EvmChain, TxSender
from chaos.checker import VIOLATIONS, classify_all, legs, read_both
from chaos.netproxy import BLACKHOLE, DELAY, PASS, RESET, NetProxy
from chaos.timeline import BEYOND_GUARANTEE, ClockLog, Outage, claim_window
from deploy.deployer import MAX_UINT256
from deploy.devnet import ROLES, DevnetOptions, _deploy, dev_account
from deploy.processes import AnvilProcess, RedisProcess, free_port, port_open
from relayer.protocol.instruction import TradeInstruction, sign_instruction
from relayer.secrets import generate_key

# this run's trade-instruction domain (DVP_PTS_DOMAIN_SALT): the workers verify what the run signs with it
DOMAIN_SALT = os.urandom(32)

E = "HashedTimelockEscrow"
NET_FAULTS = ("net_delay", "net_blackhole", "net_reset", "net_partition")
FAULTS = ("worker_kill", "chain_stop_short", "chain_stop_long", "reorg", "redis_restart", "duplicate",
          "replay_conflict", "clock_skew", *NET_FAULTS)
BOT_KINDS = ("bot_wrong_terms", "bot_late_lock", "bot_never_locks", "bot_never_claims", "bot_late_claim", "bot_relock",
             "bot_front_run")
BOT_SELLER, BOT_BUYER, FRONT_RUNNER = 5, 6, 7


@dataclass
class ChaosConfig:
    trades: int = 20
    seed: int = 1
    concurrency: int = 20
    fault_interval: float = 1.5  # mean pause before the next fault (faults are injected one at a time)
    honest_share: float = 0.5
    block_time: float = 0.5
    confirmations: int = 2
    st_lock_duration: int = 60
    max_skew: int = 4  # the relayer's DVP_MAX_CLOCK_SKEW: injected skew stays within the bound Δ is built on
    # DVP_MARGIN: Δ must cover the relayer outages the run injects (a SIGKILLed worker is down for the 0.2-3 s
    # the runner waits plus ~2.5 s of start-up), as docs/failure-modes.md tells operators to size it
    margin: int = 6
    workdir: Path = Path(".chaos")
    max_seconds: float = 3600


@dataclass
class Stats:
    faults: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    api_errors: Counter[str] = field(default_factory=Counter)
    checks_failed: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, cfg: ChaosConfig, echo: Any = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.rng = random.Random(cfg.seed)
        self.stats = Stats()
        self.instructions: list[dict[str, Any]] = []
        self.signed: dict[str, Any] = {}
        self.worker: subprocess.Popen | None = None
        self.stop = asyncio.Event()
        self.outcomes: dict[str, str] = {}
        self.chain_down: dict[str, bool] = {"st": False, "sc": False}
        self.kind_of: dict[str, str] = {}
        self.outages: list[Outage] = []  # every injected outage (worker, redis, a chain), wall clock
        self.clocks = ClockLog()  # every chain clock offset the runner set, to date chain times in wall time
        self.windows: dict[str, dict[str, Any]] = {}  # ONE-SIDED trade -> its claim window (chaos.timeline)
        self.time_offset = {"st": 0, "sc": 0}  # injected clock offsets (anvil forgets them on restart)
        self._background: set[asyncio.Task[None]] = set()
        self.max_skew_seen = 0  # largest |ST - SC| latest-block time difference sampled
        self.lost_blocks: list[tuple[str, int]] = []  # (chain, depth) when a restart did not keep the head
        self._kind_deck: list[str] = []

    def _draw(self, deck: list[str], make: Any) -> str:
        """Shuffled decks instead of independent draws: every kind comes up, even in a short run."""
        if not deck:
            deck.extend(make())
            self.rng.shuffle(deck)
        return deck.pop()

    # ------------------------------------------------------------------ set-up

    async def setup(self) -> None:
        d = self.cfg.workdir
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*"):
            if f.is_file():
                f.unlink()
        shutil.rmtree(d / "redis", ignore_errors=True)  # a fresh Redis: no trades from an earlier run
        self.st_node = AnvilProcess(18101, free_port(), self.cfg.block_time, state_file=d / "st.state",
                                    log_file=d / "anvil-st.log").start()
        self.sc_node = AnvilProcess(18102, free_port(), self.cfg.block_time, state_file=d / "sc.state",
                                    log_file=d / "anvil-sc.log").start()
        self.redis = RedisProcess(free_port(), d / "redis", appendfsync="always").start()
        # the worker's paths to each chain: a primary and a standby proxy, both to the same node
        self.paths: dict[str, tuple[NetProxy, NetProxy]] = {}
        for name, node in (("st", self.st_node), ("sc", self.sc_node)):
            self.paths[name] = (await NetProxy("127.0.0.1", node.port, free_port()).start(),
                                await NetProxy("127.0.0.1", node.port, free_port()).start())
        self.doc = await _deploy(DevnetOptions(st_standard="own"), self.st_node.url, self.sc_node.url, self.redis.url)
        self.st = EvmChain("st", [self.st_node.url])
        self.sc = EvmChain("sc", [self.sc_node.url])
        await self.st.connect()
        await self.sc.connect()
        issuer = dev_account(ROLES["issuer"])
        self.bot_seller, self.bot_buyer = dev_account(BOT_SELLER), dev_account(BOT_BUYER)
        self.st_token = next(iter(self.doc["st"]["tokens"].values()))
        self.sc_token = next(iter(self.doc["sc"]["tokens"].values()))
        holders = [self.bot_seller.address, self.bot_buyer.address]
        for chain, token, kind in ((self.st, self.st_token, "SecurityToken"), (self.sc, self.sc_token, "Stablecoin")):
            tx = TxSender(chain, issuer)
            await tx.transact(token, encode_call(kind, "setAllowed", holders, True))
            if kind == "SecurityToken":
                await tx.transact(token, encode_call(kind, "issue", self.bot_seller.address, 10**9))
            else:
                await tx.transact(token, encode_call(kind, "issue", self.bot_buyer.address, 10**15, b"\0" * 32))
        self.bot_tx = {
            ("st", "seller"): TxSender(self.st, self.bot_seller, rebroadcast_after=1.0),
            ("sc", "seller"): TxSender(self.sc, self.bot_seller, rebroadcast_after=1.0),
            ("sc", "buyer"): TxSender(self.sc, self.bot_buyer, rebroadcast_after=1.0),
        }
        # a third party with its own account, tipping 50 gwei: its claims land before the relayer's 1 gwei ones
        self.front_runner = TxSender(self.st, dev_account(FRONT_RUNNER), priority_fee_wei=50 * 10**9,
                                     rebroadcast_after=1.0)
        await self.bot_tx[("st", "seller")].transact(self.st_token, encode_call("SecurityToken", "approve",
                                                                                 self.doc["st"]["escrow"], MAX_UINT256))
        await self.bot_tx[("sc", "buyer")].transact(self.sc_token, encode_call("Stablecoin", "approve",
                                                                                self.doc["sc"]["escrow"], MAX_UINT256))
        self.api_port = free_port()
        self.api_token = "chaos-" + os.urandom(8).hex()
        seller, buyer = dev_account(ROLES["seller"]), dev_account(ROLES["buyer"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DVP_")} | {
            "DVP_ENV_FILE": "/nonexistent",
            "DVP_REDIS_URL": self.redis.url,
            "DVP_ST_RPC_URL": self.paths["st"][0].url, "DVP_ST_RPC_STANDBY_URLS": self.paths["st"][1].url,
            "DVP_ST_ESCROW": self.doc["st"]["escrow"],
            "DVP_ST_TOKENS": self.st_token, "DVP_ST_START_BLOCK": str(self.doc["st"]["deploy_block"]),
            "DVP_SC_RPC_URL": self.paths["sc"][0].url, "DVP_SC_RPC_STANDBY_URLS": self.paths["sc"][1].url,
            "DVP_SC_ESCROW": self.doc["sc"]["escrow"],
            "DVP_SC_TOKENS": self.sc_token, "DVP_SC_START_BLOCK": str(self.doc["sc"]["deploy_block"]),
            "DVP_TRUSTED_PTS_SIGNERS": dev_account(ROLES["pts"]).address,
            "DVP_PTS_DOMAIN_SALT": "0x" + DOMAIN_SALT.hex(),
            "DVP_PARTY_KEYS": f"{seller.key.hex()},{buyer.key.hex()}",
            "DVP_SECRET_KEY": generate_key(),
            "DVP_CONFIRMATIONS": str(self.cfg.confirmations), "DVP_BLOCK_TIME": str(self.cfg.block_time),
            "DVP_INCLUSION_DELAY": "1", "DVP_MAX_CLOCK_SKEW": str(self.cfg.max_skew),
            "DVP_MARGIN": str(self.cfg.margin),
            "DVP_ST_LOCK_DURATION": str(self.cfg.st_lock_duration), "DVP_POLL_INTERVAL": "0.1",
            "DVP_RPC_TIMEOUT": "2", "DVP_API_PORT": str(self.api_port), "DVP_API_TOKENS": self.api_token,
            "DVP_LOG_LEVEL": "WARNING",
        }
        # Δ as the relayer computes it: k × block time + inclusion + skew + margin
        import math

        self.delta = math.ceil(self.cfg.confirmations * self.cfg.block_time + 1 + self.cfg.max_skew + self.cfg.margin)
        self.start_worker()

    def start_worker(self) -> None:
        exe = Path(sys.executable).with_name("dvp-relayer")
        log = open(self.cfg.workdir / "worker.log", "ab")
        self.worker = subprocess.Popen([str(exe), "run"], env=self.env, stdout=log, stderr=log)

    async def teardown(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        await self.st.close()
        await self.sc.close()
        for primary, standby in self.paths.values():
            await primary.stop()
            await standby.stop()
        self.st_node.stop()
        self.sc_node.stop()
        self.redis.stop()

    # ------------------------------------------------------------------ trades

    async def _post(self, http: aiohttp.ClientSession, body: str) -> tuple[int, dict[str, Any]]:
        async with http.post(f"http://127.0.0.1:{self.api_port}/v1/trades", data=body,
                             headers={"Authorization": f"Bearer {self.api_token}",
                                      "Content-Type": "application/json"}) as r:
            return r.status, await r.json()

    async def submit(self, http: aiohttp.ClientSession, body: str, deadline: float) -> int | None:
        """Post until the worker answers (a PTS retries while the worker is down)."""
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                status, doc = await self._post(http, body)
                if status < 500:
                    return status
                self.stats.api_errors[f"http_{status}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                self.stats.api_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.3)
        return None

    async def _chain_now(self, chain: EvmChain) -> int:
        while True:
            try:
                return await chain.now()
            except Exception:  # noqa: BLE001 - chain down or mid-reorg
                await asyncio.sleep(0.5)

    async def one_trade(self, http: aiohttp.ClientSession, i: int) -> None:
        rng = self.rng
        honest = max(1, round(len(BOT_KINDS) * self.cfg.honest_share / (1 - self.cfg.honest_share)))
        kind = self._draw(self._kind_deck, lambda: ["honest"] * honest + list(BOT_KINDS))
        self.stats.kinds[kind] += 1
        seller, buyer = dev_account(ROLES["seller"]).address, dev_account(ROLES["buyer"]).address
        if kind in ("bot_never_claims", "bot_late_claim"):
            seller = self.bot_seller.address
        elif kind not in ("honest", "bot_front_run"):  # a front-runner is a third party to an honest trade
            buyer = self.bot_buyer.address
        now = await self._chain_now(self.st)
        ins = TradeInstruction(
            tradeId="0x" + os.urandom(32).hex(), stChainId=self.st.chain_id, stToken=self.st_token,
            stAmount=rng.randint(1, 50), scChainId=self.sc.chain_id, scToken=self.sc_token,
            scAmount=rng.randint(1, 10**6), sellerStAccount=seller, sellerScAccount=seller,
            buyerScAccount=buyer, buyerStAccount=buyer, deadline=now + 3 * self.cfg.st_lock_duration,
        )
        signed = sign_instruction(ins, dev_account(ROLES["pts"]).key, DOMAIN_SALT)
        body = signed.model_dump_json()
        self.instructions.append(ins.model_dump())
        self.kind_of[ins.tradeId] = kind
        deadline = time.monotonic() + 120
        status = await self.submit(http, body, deadline)
        if status != 202:
            self.stats.checks_failed.append(f"trade {i}: submission answered {status}")
            return
        if rng.random() < 0.15:
            self.stats.faults["duplicate"] += 1
            if await self.submit(http, body, deadline) != 202:
                self.stats.checks_failed.append(f"trade {i}: duplicate not answered 202")
        if rng.random() < 0.15:
            self.stats.faults["replay_conflict"] += 1
            other = sign_instruction(ins.model_copy(update={"scAmount": ins.scAmount + 1}),
                                     dev_account(ROLES["pts"]).key, DOMAIN_SALT)
            if await self.submit(http, other.model_dump_json(), deadline) != 409:
                self.stats.checks_failed.append(f"trade {i}: conflicting replay not answered 409")
        if kind != "honest":
            try:
                await self.bot(kind, ins)
            except Exception as exc:  # noqa: BLE001 - a bot that fails is an absent counterparty, also fine
                self.stats.api_errors[f"bot:{type(exc).__name__}"] += 1
        await self.wait_resolved(ins)

    async def wait_resolved(self, ins: TradeInstruction) -> None:
        """Hold the concurrency slot until the trade's timelocks have passed or both legs are claimed."""
        limit = time.monotonic() + 4 * self.cfg.st_lock_duration
        tid = ins.trade_id_bytes
        st_id, sc_id = swap_id(ins.sellerStAccount, tid), swap_id(ins.buyerScAccount, tid)
        while time.monotonic() < limit and not self.stop.is_set():
            try:
                st_slot = await self._slot(self.st, self.doc["st"]["escrow"], st_id)
                sc_slot = await self._slot(self.sc, self.doc["sc"]["escrow"], sc_id)
                if st_slot == bytes(32) and sc_slot == bytes(32) and await self._touched(ins):
                    return
            except Exception:  # noqa: BLE001 - chains stop, reorg and restart under us: poll again
                pass
            await asyncio.sleep(1.0)

    async def _touched(self, ins: TradeInstruction) -> bool:
        """True once the trade is over: an ST lock existed and is gone, or nothing can be locked any more."""
        now = await self.st.now()
        logs = await self.st.call(lambda w3: w3.eth.get_logs({
            "address": self.doc["st"]["escrow"], "fromBlock": self.doc["st"]["deploy_block"],
            "topics": [None, "0x" + ins.trade_id_bytes.hex()]}))
        return bool(logs) or now > ins.deadline

    async def _slot(self, chain: EvmChain, escrow: str, sid: bytes) -> bytes:
        raw = await chain.call(lambda w3: w3.eth.call({"to": escrow, "data": encode_call(E, "swaps", sid)}))
        return bytes(raw)[-32:]

    async def _wait_lock(self, chain: EvmChain, escrow: str, ins: TradeInstruction, sender: str,
                         timeout: float) -> dict[str, Any] | None:
        from web3 import AsyncWeb3

        from adapters.contracts import abi

        c = AsyncWeb3().eth.contract(abi=abi(E))
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            try:
                logs = await chain.call(lambda w3: w3.eth.get_logs({
                    "address": escrow, "fromBlock": self.doc[chain.name]["deploy_block"],
                    "topics": [None, "0x" + ins.trade_id_bytes.hex()]}))
                for lg in logs:
                    args = c.events.Locked().process_log(lg)["args"]
                    if args["sender"] == sender:
                        return dict(args)
            except Exception:  # noqa: BLE001 - chain may be down for a moment
                pass
            await asyncio.sleep(0.5)
        return None

    async def bot(self, kind: str, ins: TradeInstruction) -> None:
        """The dishonest or absent counterparty, acting with keys the relayer does not hold."""
        rng = self.rng
        st_escrow, sc_escrow = self.doc["st"]["escrow"], self.doc["sc"]["escrow"]
        self.stats.faults[kind] += 1
        if kind in ("bot_never_claims", "bot_late_claim"):
            secret = os.urandom(32)
            t_st = await self._chain_now(self.st) + self.cfg.st_lock_duration
            await self.bot_tx[("st", "seller")].transact(st_escrow, encode_call(
                E, "lockTokens", ins.trade_id_bytes, ins.stToken, ins.stAmount, ins.buyerStAccount,
                hashlib.sha256(secret).digest(), t_st), timeout=60)
            if kind == "bot_never_claims":
                return
            sc_lock = await self._wait_lock(self.sc, sc_escrow, ins, ins.buyerScAccount, self.cfg.st_lock_duration)
            if sc_lock is None:
                return
            while await self._chain_now(self.sc) < sc_lock["timelock"] - 3:
                await asyncio.sleep(0.5)
            await self.bot_tx[("sc", "seller")].transact(sc_escrow, encode_call(
                E, "claimTokens", secret, swap_id(ins.buyerScAccount, ins.trade_id_bytes), ins.scToken, ins.scAmount,
                ins.sellerScAccount, sc_lock["timelock"]), timeout=30)
            return
        if kind == "bot_never_locks":
            return
        st_lock = await self._wait_lock(self.st, st_escrow, ins, ins.sellerStAccount, self.cfg.st_lock_duration)
        if st_lock is None:
            return
        if kind == "bot_front_run":
            await self._front_run(ins, st_lock)
            return
        if kind == "bot_relock":
            await self._relock(ins, st_lock)
            return
        amount, receiver, hashlock = ins.scAmount, ins.sellerScAccount, st_lock["hashlock"]
        timelock = st_lock["timelock"] - self.delta
        if kind == "bot_wrong_terms":
            wrong = rng.choice(["amount", "receiver", "hashlock", "timelock"])
            if wrong == "amount":
                amount -= 1
            elif wrong == "receiver":
                receiver = self.bot_buyer.address
            elif wrong == "hashlock":
                hashlock = os.urandom(32)
            else:
                timelock = st_lock["timelock"] - 1
        elif kind == "bot_late_lock":
            while await self._chain_now(self.sc) < st_lock["timelock"] - self.delta + 1:
                await asyncio.sleep(0.5)
            timelock = max(timelock, await self._chain_now(self.sc) + 2)
        now = await self._chain_now(self.sc)
        if timelock <= now + 1:
            return
        await self.bot_tx[("sc", "buyer")].transact(sc_escrow, encode_call(
            E, "lockTokens", ins.trade_id_bytes, ins.scToken, amount, receiver, hashlock, timelock), timeout=30)

    async def _front_run(self, ins: TradeInstruction, st_lock: dict[str, Any]) -> None:
        """Wait for the seller's SC claim to show the secret, then claim the ST for the buyer first (any account may
        claim; the ST goes to the buyer all the same), tipping high. The relayer's own claim then finds it done."""
        sc_swap = swap_id(ins.buyerScAccount, ins.trade_id_bytes)
        limit = time.monotonic() + self.cfg.st_lock_duration
        while time.monotonic() < limit:
            preimage = await self._revealed(sc_swap)
            if preimage is not None:
                await self.front_runner.transact(self.doc["st"]["escrow"], encode_call(
                    E, "claimTokens", preimage, swap_id(ins.sellerStAccount, ins.trade_id_bytes), ins.stToken,
                    ins.stAmount, ins.buyerStAccount, st_lock["timelock"]), timeout=30)
                return
            await asyncio.sleep(0.2)

    async def _revealed(self, sc_swap: bytes) -> bytes | None:
        """The preimage of a Claimed event of this coin-ledger swap, once there is one."""
        from web3 import AsyncWeb3

        from adapters.contracts import abi

        c = AsyncWeb3().eth.contract(abi=abi(E))
        try:
            logs = await self.sc.call(lambda w3: w3.eth.get_logs({
                "address": self.doc["sc"]["escrow"], "fromBlock": self.doc["sc"]["deploy_block"],
                "topics": [c.events.Claimed().topic, "0x" + sc_swap.hex()]}))
        except Exception:  # noqa: BLE001 - the chain may be down for a moment
            return None
        return bytes(c.events.Claimed().process_log(logs[0])["args"]["preimage"]) if logs else None

    async def _relock(self, ins: TradeInstruction, st_lock: dict[str, Any]) -> None:
        """A wrong-terms SC lock with a short timelock; once it is refunded (by the relayer, watching), the same trade
        id locked again with the right terms while they are still acceptable."""
        sc_escrow = self.doc["sc"]["escrow"]
        sid = swap_id(self.bot_buyer.address, ins.trade_id_bytes)
        now = await self._chain_now(self.sc)
        await self.bot_tx[("sc", "buyer")].transact(sc_escrow, encode_call(
            E, "lockTokens", ins.trade_id_bytes, ins.scToken, ins.scAmount + 1, ins.sellerScAccount,
            st_lock["hashlock"], now + 4), timeout=30)
        limit = time.monotonic() + self.cfg.st_lock_duration
        while time.monotonic() < limit and await self._slot(self.sc, sc_escrow, sid) != bytes(32):
            await asyncio.sleep(0.5)
        timelock = st_lock["timelock"] - self.delta
        if await self._slot(self.sc, sc_escrow, sid) != bytes(32) or timelock <= await self._chain_now(self.sc) + 1:
            return  # not refunded in time, or no time left: the trade aborts, both refunded
        await self.bot_tx[("sc", "buyer")].transact(sc_escrow, encode_call(
            E, "lockTokens", ins.trade_id_bytes, ins.scToken, ins.scAmount, ins.sellerScAccount,
            st_lock["hashlock"], timelock), timeout=30)

    # ------------------------------------------------------------------ faults

    async def _set_clock(self, name: str) -> None:
        """Chain time = wall time + this chain's injected offset, set absolutely (evm_setTime): anvil forgets a
        relative evm_increaseTime on restart, and absolute setting cannot drift."""
        chain = self.st if name == "st" else self.sc
        await chain.rpc("evm_setTime", [int(time.time()) + self.time_offset[name]])
        self.clocks.set(name, time.time(), self.time_offset[name])

    async def _nonces(self, chain: EvmChain) -> dict[str, int]:
        """The mined transaction count of every account that sends on the devnet (relayer parties and bots)."""
        accounts = [dev_account(ROLES["seller"]).address, dev_account(ROLES["buyer"]).address,
                    self.bot_seller.address, self.bot_buyer.address]
        counts = await chain.rpc_batch([("eth_getTransactionCount", [a, "latest"]) for a in accounts])
        return {a: int(c, 16) for a, c in zip(accounts, counts)}

    async def _worker_back(self, killed_at: float) -> None:
        """Record the worker's outage: from the kill until its API answers again (at most 30 s later)."""
        limit = time.monotonic() + 30
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            while time.monotonic() < limit:
                try:
                    async with http.get(f"http://127.0.0.1:{self.api_port}/healthz") as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        self.outages.append(Outage("worker", killed_at, time.time()))

    async def _sample_skew(self) -> None:
        """|ST - SC| of the latest blocks' timestamps, skipping the seconds after a chain restart: a restarted anvil's
        latest block is its pre-stop block until it mines a new one (not a clock difference)."""
        if any(o.what.endswith("chain") and time.time() - o.end < 3.0 for o in self.outages[-4:]):
            return
        try:
            st, sc = await self.st.get_block("latest"), await self.sc.get_block("latest")
        except Exception:  # noqa: BLE001 - a chain is down: no sample
            return
        self.max_skew_seen = max(self.max_skew_seen, abs(int(st["timestamp"]) - int(sc["timestamp"])))

    async def faults(self) -> None:
        """Faults one at a time, in shuffled rounds of every kind (each kind as often). Chain outages take
        most of a run's time; more of them at once would leave the chains down most of it."""
        kinds = ["worker_kill", "chain_stop_short", "chain_stop_long", "reorg", "redis_restart", "clock_skew",
                 *NET_FAULTS]
        deck: list[str] = []
        while not self.stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1 / self.cfg.fault_interval))
            if self.stop.is_set():
                return
            await self._sample_skew()
            fault = self._draw(deck, lambda: list(kinds))
            try:
                if fault == "worker_kill":
                    assert self.worker is not None
                    killed_at = time.time()
                    self.worker.kill()
                    self.worker.wait()
                    await asyncio.sleep(self.rng.uniform(0.2, 3.0))
                    self.start_worker()
                    task = asyncio.create_task(self._worker_back(killed_at))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                elif fault in ("chain_stop_short", "chain_stop_long"):
                    name = self.rng.choice(["st", "sc"])
                    if self.chain_down[name]:
                        continue
                    node = self.st_node if name == "st" else self.sc_node
                    down = (self.rng.uniform(0.5, self.delta * 0.6) if fault == "chain_stop_short"
                            else self.rng.uniform(self.delta * 1.05, self.delta * 1.3))
                    chain = self.st if name == "st" else self.sc
                    before = await chain.get_block("latest")
                    nonces = await self._nonces(chain)
                    self.chain_down[name] = True
                    started = time.time()
                    node.stop(timeout=30)
                    await asyncio.sleep(down)
                    while port_open(node.port):
                        await asyncio.sleep(0.1)
                    node.start()
                    self.outages.append(Outage(f"{name} chain", started, time.time()))
                    # anvil keeps blocks and state across a restart but not its evm_increaseTime offset: put the
                    # clock back where it was, or the chain's time would jump back (no real chain does that)
                    await self._set_clock(name)
                    self.chain_down[name] = False
                    try:
                        kept = await chain.get_block(int(before["number"]))
                    except Exception:  # noqa: BLE001 - BlockNotFound: the restarted chain is shorter
                        kept = None
                    # a restart must keep the blocks AND the state they led to (anvil once restored an older state
                    # under a newer block index: mined transactions un-ran, their nonces free again)
                    rolled_back = any(n < nonces[a] for a, n in (await self._nonces(chain)).items())
                    if kept is None or kept["hash"] != before["hash"] or rolled_back:
                        self.lost_blocks.append((name, int(before["number"])))
                elif fault == "reorg":
                    chain = self.rng.choice([self.st, self.sc])
                    if self.chain_down[chain.name]:
                        continue
                    await chain.rpc("anvil_reorg", [self.rng.randint(1, self.cfg.confirmations - 1) or 1, []])
                    await self._set_clock(chain.name)  # anvil_reorg sets the chain's clock back ~0.5-1 s each time
                elif fault in NET_FAULTS:
                    await self._net_fault(fault)
                elif fault == "redis_restart":
                    started = time.time()
                    self.redis.stop(kill=True)
                    await asyncio.sleep(self.rng.uniform(0.2, 2.0))
                    self.redis.start()
                    self.outages.append(Outage("redis", started, time.time()))
                elif fault == "clock_skew":
                    # each chain's clock runs 0..max_skew s ahead of wall time, so the two never differ by more
                    # than the bound Δ is built on, and a restart's first block (anvil stamps it before the
                    # clock is set again) is off by at most that much too
                    name = self.rng.choice(["st", "sc"])
                    chain = self.st if name == "st" else self.sc
                    if self.chain_down[name]:
                        continue
                    shift = self.rng.randint(0, self.cfg.max_skew) - self.time_offset[name]
                    self.time_offset[name] += shift
                    await self._set_clock(name)
                self.stats.faults[fault] += 1
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                self.stats.api_errors[f"inject:{fault}:{type(exc).__name__}"] += 1

    async def _net_fault(self, fault: str) -> None:
        """One network fault on one chain's paths, for a while, then the paths are clear again. A partition
        counts as that chain's outage (from the worker's side it is one); the others leave the standby path."""
        name = self.rng.choice(["st", "sc"])
        primary, standby = self.paths[name]
        if fault == "net_delay":
            primary.set(DELAY, latency=self.rng.uniform(0.2, 3.0), jitter=0.5)
            await asyncio.sleep(self.rng.uniform(1.0, self.delta * 0.6))
        elif fault == "net_blackhole":
            primary.set(BLACKHOLE)
            await asyncio.sleep(self.rng.uniform(1.0, self.delta))
        elif fault == "net_reset":
            primary.set(RESET)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        else:  # net_partition
            started = time.time()
            primary.set(BLACKHOLE)
            standby.set(BLACKHOLE)
            await asyncio.sleep(self.rng.uniform(0.5, self.delta * 1.3))
            standby.set(PASS)
            self.outages.append(Outage(f"{name} chain", started, time.time()))
        primary.set(PASS)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        t0 = time.monotonic()
        try:
            return await self._run(t0)
        except BaseException:
            # nothing may outlive an interrupted run: an orphan anvil or Redis would keep writing its (older)
            # state into the workdir, and the next run's restarted chain or Redis would load it
            if self.worker is not None and self.worker.poll() is None:
                self.worker.kill()
            for proc in ("st_node", "sc_node", "redis"):
                if hasattr(self, proc):
                    getattr(self, proc).stop()
            for paths in getattr(self, "paths", {}).values():
                for proxy in paths:
                    await proxy.stop()
            raise

    async def _run(self, t0: float) -> int:
        await self.setup()
        self.echo(f"chaos: {self.cfg.trades} trades, seed {self.cfg.seed}, Δ={self.delta}s, "
                  f"k={self.cfg.confirmations}, workdir {self.cfg.workdir}")
        injector = asyncio.create_task(self.faults())
        sem = asyncio.Semaphore(self.cfg.concurrency)
        done = 0

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def slot(i: int) -> None:
                nonlocal done
                async with sem:
                    try:
                        await self.one_trade(http, i)
                    except Exception as exc:  # noqa: BLE001 - the harness reports, the checker judges the chains
                        self.stats.checks_failed.append(f"trade {i}: runner error {type(exc).__name__}: {exc}")
                    done += 1
                    if done % max(1, self.cfg.trades // 20) == 0:
                        self.echo(f"  {done}/{self.cfg.trades} trades resolved, {time.monotonic() - t0:.0f}s, "
                                  f"faults so far {sum(self.stats.faults.values())}")

            try:
                await asyncio.wait_for(asyncio.gather(*(slot(i) for i in range(self.cfg.trades))),
                                       self.cfg.max_seconds)
            except asyncio.TimeoutError:
                self.echo("chaos: time bound reached; finishing")
        self.stop.set()
        await injector
        if self._background:
            await asyncio.gather(*self._background)
        for node in (self.st_node, self.sc_node):
            if not port_open(node.port):
                node.start()
        if not port_open(self.redis.port):
            self.redis.start()
        if self.worker is None or self.worker.poll() is not None:
            self.start_worker()
        # make every timelock pass, give the relayer time to refund what is left
        for chain in (self.st, self.sc):
            await chain.rpc("evm_increaseTime", [4 * self.cfg.st_lock_duration])
            await chain.rpc("evm_mine", [])
        result = await self.settle_out()
        await self.teardown()
        self.report(result, time.monotonic() - t0)
        (self.cfg.workdir / "outcomes.json").write_text(json.dumps({
            "trades": {t: {"outcome": o, "kind": self.kind_of.get(t), "claim_window": self.windows.get(t)}
                       for t, o in self.outcomes.items()},
            "outages": [[o.what, o.start, o.end] for o in self.outages], "clock_offsets": self.clocks.changes,
            "budget_seconds": self.delta - self.cfg.margin, "lost_blocks": self.lost_blocks,
            "faults": dict(self.stats.faults)}, indent=1))
        bad = sum(result[v] for v in VIOLATIONS) + len(self.stats.checks_failed) + result["PENDING"]
        return 1 if bad else 0

    async def settle_out(self, timeout: float = 120.0) -> Counter[str]:
        limit = time.monotonic() + timeout
        while True:
            st, sc = await read_both(self.doc)
            self.outcomes = classify_all(self.instructions, st, sc, self.delta)
            result = Counter(self.outcomes.values())
            if (not result["STUCK"] and not result["PENDING"]) or time.monotonic() > limit:
                break
            await asyncio.sleep(2)
        await self._explain(st, sc)
        return Counter(self.outcomes.values())

    async def _explain(self, st: Any, sc: Any) -> None:
        """Date every ONE-SIDED trade's claim window and set apart those whose injected outages left less than
        Δ − margin seconds to claim in: the HTLC limit (chaos.timeline). All others stay violations."""
        budget = float(self.delta - self.cfg.margin)
        for ins in self.instructions:
            tid = ins["tradeId"]
            if self.outcomes.get(tid) != "ONE-SIDED":
                continue
            st_leg, sc_leg = legs(ins, st, sc)
            done, done_logs, missing, name = ((sc_leg, sc, st_leg, "st") if sc_leg.claimed
                                              else (st_leg, st, sc_leg, "sc"))
            if done.claimed_block is None or missing.locked is None:
                continue
            revealed = await done_logs.block_time(done.claimed_block)
            window = claim_window(name, revealed, "sc" if name == "st" else "st", missing.locked["timelock"],
                                  self.clocks, self.outages, budget,
                                  observe=self.cfg.confirmations * self.cfg.block_time)
            self.windows[tid] = window.as_dict()
            if window.beyond_guarantee:
                self.outcomes[tid] = BEYOND_GUARANTEE

    def report(self, result: Counter[str], seconds: float) -> None:
        self.echo("")
        self.echo(f"{'outcome (checker, chain reads only)':<40}{'trades':>8}")
        for k in ("SETTLED", "ABORTED", "ONE-SIDED", "STUCK", "BAD-TERMS-CLAIMED", "PENDING"):
            self.echo(f"  {k:<38}{result.get(k, 0):>8}")
        budget = self.delta - self.cfg.margin
        self.echo(f"  {'ONE-SIDED, outages left < Δ-margin':<38}{result.get(BEYOND_GUARANTEE, 0):>8}")
        self.echo(f"    (< {budget}s of service between the reveal and the other leg's timelock: the HTLC limit, not "
                  "counted as a violation; see docs/failure-modes.md)")
        for tid, w in self.windows.items():
            self.echo(f"    {self.outcomes[tid]:<10} {self.kind_of.get(tid)}: {w['unclaimed']} claim missing, window "
                      f"{w['end'] - w['start']:.1f}s, down {w['down']:.1f}s, up {w['up']:.1f}s")
        self.echo(f"{'trade kind':<24}{'count':>7}{'SETTLED':>9}{'ABORTED':>9}{'other':>7}")
        for k, v in sorted(self.stats.kinds.items()):
            outs = Counter(o for t, o in self.outcomes.items() if self.kind_of.get(t) == k)
            other = v - outs["SETTLED"] - outs["ABORTED"]
            self.echo(f"  {k:<22}{v:>7}{outs['SETTLED']:>9}{outs['ABORTED']:>9}{other:>7}")
        self.echo(f"{'fault injected':<40}{'count':>8}")
        for k in FAULTS + BOT_KINDS:
            self.echo(f"  {k:<38}{self.stats.faults.get(k, 0):>8}")
        if self.stats.api_errors:
            self.echo("transient errors seen by the runner: " + ", ".join(
                f"{k}={v}" for k, v in sorted(self.stats.api_errors.items())))
        self.echo(f"largest chain clock difference sampled: {self.max_skew_seen}s (latest blocks, not within 3 s of "
                  f"a chain restart; bound "
                  f"{self.cfg.max_skew}s + block time)")
        self.echo(f"chain restarts that lost their last blocks or state (like a reorg; the relayer must recover): "
                  f"{len(self.lost_blocks)}"
                  + (f" {self.lost_blocks}" if self.lost_blocks else ""))
        for msg in self.stats.checks_failed:
            self.echo(f"CHECK FAILED: {msg}")
        self.echo(f"{len(self.instructions)} trades in {seconds:.0f}s")


def run_chaos(cfg: ChaosConfig, echo: Any = print) -> int:
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM: unwind through run()'s clean-up like Ctrl-C

    signal.signal(signal.SIGTERM, interrupted)
    return asyncio.run(Chaos(cfg, echo).run())
