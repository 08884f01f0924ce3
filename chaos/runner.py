"""`dvp-relayer chaos --trades N --seed S`: settle N randomized trades on a private devnet while injecting faults.

The devnet has three chains, as `dvp-relayer devnet up`: two ST platforms ("st": an ERC-3643 T-REX suite; "st2": the
project's SecurityToken on a permissioned-chain profile, legacy zero-price transactions, no fee market) and one coin
ledger ("sc"). Each trade is routed to one of the ST platforms at random; one worker follows all three (its
ledgers in a DVP_CONFIG_FILE). Every chain fault below picks one of the three chains.

Faults (chosen by a seeded RNG, at random moments, one at a time, every kind as often):
  worker_kill       SIGKILL the relayer worker, restart it after 0.2-3 s
  chain_stop_short  stop an anvil (state kept with --state) for less than Δ (0.5 s to 0.6 Δ), restart it
  chain_stop_long   the same for longer than Δ (1.05 Δ to 1.3 Δ)
  reorg             anvil_reorg of depth < confirmations on a random chain
  redis_restart     SIGKILL redis-server (AOF appendfsync always) and restart it
  duplicate         re-post an accepted instruction (must answer 202, created=false)
  replay_conflict   post the same trade id with other terms (must answer 409)
  clock_skew        set one chain's clock 0..max_skew s ahead of wall time (evm_setTime)
  reorg_deep        anvil_reorg deeper than the confirmations (k+1 to k+4): beyond the guarantee, reported apart
  fee_spike         the next block's base fee jumps to 20-500 gwei (anvil_setNextBlockBaseFeePerGas), then decays
                    (the chains with a fee market: not the permissioned st2)
  issuer_action     the ERC-3643 issuer's agent (on "st") pauses the token, freezes the buyer or the escrow, deletes the
                    buyer's identity or force-transfers out of the escrow, and undoes it after 1 s to 1.5 Δ
                    (chaos/issuer.py)
  redis_failover    Redis runs as a master, a replica and a Sentinel (min-replicas-to-write 1, intake waits for the
                    replica): the master is SIGKILLed, the Sentinel promotes the replica, the old master rejoins as
                    its replica. redis_restart then SIGKILLs and restarts the replica (writes refused meanwhile)
Network faults between the worker and a chain (chaos/netproxy.py; the worker reaches each chain through a primary
and a standby proxy, the chain itself never stops):
  net_delay         the primary path delays every chunk 0.2-3 s (+ jitter) for a while
  net_blackhole     the primary path swallows everything, connections open (the worker must fail over)
  net_reset         the primary path resets every connection for a while
  net_partition     both paths of one chain go dark for 0.5 s to 1.3 Δ (the chain goes on producing blocks)
  node_stalled      the primary endpoint keeps answering the head it had, for 3 s to Δ (chaos/lying_node.py)
  node_drops_logs   the primary endpoint answers every eth_getLogs with no logs, for 1 s to Δ
Per-trade counterparty behaviour (a bot holding keys the relayer does not have):
  bot_wrong_terms   the bot buyer locks SC with a wrong amount, receiver, hashlock or timelock
  bot_late_lock     the bot buyer locks SC when less than Δ is left on T_st
  bot_never_locks   the bot buyer never locks
  bot_never_claims  the bot seller locks ST and never claims the SC
  bot_late_claim    the bot seller claims the SC just before T_sc
  bot_relock        the bot buyer locks SC with a wrong amount and a short timelock, and once that lock is
                    refunded locks the same trade id again with the right terms
  bot_front_run     an honest trade (on "st", where a tip buys priority), and a third party that claims the ST for
                    the buyer with the secret the seller revealed, tipping to land before the relayer's own claim
  bot_congest       the bot buyer locks the right terms 6 s before T_sc while filling the coin ledger's blocks
                    (chaos/congestion.py) for 6-12 s, its own lock tipping above the filler
At the end every timelock is made to pass, the relayer refunds what is left, and the independent checker
(chaos.checker, chain reads only) classifies every trade, and every trade answered 202 is looked up through the
API (an accepted trade the relayer no longer knows is LOST). Exit status 1 on any violation, lost or stuck trade.
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
from chaos.checker import LOCK_GONE, VIOLATIONS, ChainLogs, classify_all, legs, of_trade, read_all
from chaos.congestion import BlockFiller
from chaos.issuer import ACTIONS, IssuerAgent
from chaos.lying_node import LyingNode
from chaos.netproxy import BLACKHOLE, DELAY, PASS, RESET, NetProxy
from chaos.timeline import BEYOND_GUARANTEE, DEEP_REORG, ISSUER_ACTED, ClockLog, Outage, claim_window
from deploy import trex
from deploy.deployer import ChainDeployment, deploy, onboard_holder
from deploy.devnet import PERMISSIONED_ANVIL, ROLES, DevnetOptions, _deploy, dev_account, ledgers_toml
from deploy.processes import AnvilProcess, RedisProcess, SentinelGroup, free_port, port_open
from relayer.protocol.instruction import TradeInstruction, sign_instruction
from relayer.secrets import generate_key

# this run's trade-instruction domain (DVP_PTS_DOMAIN_SALT): the workers verify what the run signs with it
DOMAIN_SALT = os.urandom(32)

E = "HashedTimelockEscrow"
CHAINS = ("st", "st2", "sc")  # the devnet's ledgers: two ST platforms, one coin ledger
ST_CHAINS = ("st", "st2")
CHAIN_IDS = {"st": 18101, "st2": 18103, "sc": 18102}
NET_FAULTS = ("net_delay", "net_blackhole", "net_reset", "net_partition", "node_stalled", "node_drops_logs")
INJECTED = ("worker_kill", "chain_stop_short", "chain_stop_long", "reorg", "reorg_deep", "redis_restart",
            "redis_failover", "clock_skew", "fee_spike", "issuer_action", *NET_FAULTS)  # by the fault loop
FAULTS = (*INJECTED, "duplicate", "replay_conflict")
BOT_KINDS = ("bot_wrong_terms", "bot_late_lock", "bot_never_locks", "bot_never_claims", "bot_late_claim", "bot_relock",
             "bot_front_run", "bot_congest")
BOT_SELLER, BOT_BUYER, FRONT_RUNNER = 5, 6, 7
CONGESTING_BUYER = 7  # the bot_congest buyer: its own account (its urgent lock must not queue behind the bot buyer's)
FILLERS = (8, 9)  # the congesting bot's accounts (coin ledger only)
FILLER_TIP, BOT_CONGEST_TIP = 50 * 10**9, 100 * 10**9


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
    st_standard: str = "erc3643"  # the ST: a T-REX suite (issuer actions injected) or "own" (SecurityToken)
    sentinel: bool = True  # Redis as master + replica + Sentinel (redis_failover injected), else one redis-server
    max_fee_gwei: float = 2000.0  # DVP_MAX_FEE_GWEI: above every injected base-fee spike
    fault_rounds: int = 0  # go on with more trades until every fault and bot kind came up this many times


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
        self.chain_down: dict[str, bool] = dict.fromkeys(CHAINS, False)
        self.kind_of: dict[str, str] = {}
        self.outages: list[Outage] = []  # every injected outage (worker, redis, a chain), wall clock
        self.clocks = ClockLog()  # every chain clock offset the runner set, to date chain times in wall time
        self.windows: dict[str, dict[str, Any]] = {}  # ONE-SIDED trade -> its claim window (chaos.timeline)
        self.target = ""  # the chain the fault being injected acts on (faults.jsonl)
        self.time_offset = dict.fromkeys(CHAINS, 0)  # injected clock offsets (anvil forgets them on restart)
        self.nodes: dict[str, AnvilProcess] = {}
        self.chains: dict[str, EvmChain] = {}
        self.st_of: dict[str, str] = {}  # trade id -> the ST platform it was routed to
        self.target_counts: Counter[tuple[str, str]] = Counter()  # (fault, chain) of every chain fault injected
        self._background: set[asyncio.Task[None]] = set()
        self.max_skew_seen = 0  # largest difference between the chains' latest-block times sampled
        self.lost_blocks: list[tuple[str, int]] = []  # (chain, depth) when a restart did not keep the head
        self.deep_reorgs: list[tuple[str, float, int]] = []  # (chain, wall time, depth) of each reorg deeper than k
        self.issuer_acts: list[tuple[str, float, float, str]] = []  # (action, start, end, the one holder it hit or "")
        self.accepted: set[str] = set()  # trade ids answered 202
        self.refused: Counter[str] = Counter()  # submissions refused with a 4xx code the run expects
        self.lost: list[str] = []
        self.evidence: dict[str, str] = {}  # trade -> why it is set apart (deep reorg, issuer action)
        # (chain, swap id) of final escrow events a deep reorg removed -> (wall time, evidence)
        self.reorged_out: dict[tuple[str, bytes], tuple[float, str]] = {}
        self._congesting = False
        self.issuer_until = 0.0  # wall time until which intake may refuse on compliance (an issuer action, + 3 s)
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
        for name in CHAINS:  # the permissioned ST platform runs like the devnet's (berlin, gas price 0)
            self.nodes[name] = AnvilProcess(CHAIN_IDS[name], free_port(), self.cfg.block_time,
                                            state_file=d / f"{name}.state", log_file=d / f"anvil-{name}.log",
                                            extra_args=PERMISSIONED_ANVIL if name == "st2" else ()).start()
        self.group: SentinelGroup | None = None
        if self.cfg.sentinel:
            self.group = SentinelGroup(d / "redis")  # set first: an interrupted start is still stopped
            await asyncio.to_thread(self.group.start)
            redis_url, redis_env = self.group.master().url, {"DVP_REDIS_SENTINELS": self.group.sentinels,
                                                             "DVP_REDIS_MIN_REPLICAS": "1"}
        else:
            self.redis = RedisProcess(free_port(), d / "redis", appendfsync="always").start()
            redis_url, redis_env = self.redis.url, {"DVP_REDIS_URL": self.redis.url}
        # the worker's paths to each chain: a primary (a node that may lie, behind a proxy that may misbehave) and
        # a standby proxy, both to the same node
        self.paths: dict[str, tuple[NetProxy, NetProxy]] = {}
        self.liars: dict[str, LyingNode] = {}
        for name, node in self.nodes.items():
            self.paths[name] = (await NetProxy("127.0.0.1", node.port, free_port()).start(),
                                await NetProxy("127.0.0.1", node.port, free_port()).start())
            self.liars[name] = await LyingNode(self.paths[name][0].url).start()
        self.doc = await _deploy(DevnetOptions(st_standard=self.cfg.st_standard, st2_permissioned=True),
                                 self.nodes["st"].url, self.nodes["sc"].url, redis_url, st2_url=self.nodes["st2"].url)
        for name in CHAINS:
            permissioned = name == "st2"
            self.chains[name] = EvmChain(name, [self.nodes[name].url], fee_mode="legacy" if permissioned else "eip1559",
                                         gas_price_wei=0 if permissioned else None)
            await self.chains[name].connect()
        self.st, self.sc = self.chains["st"], self.chains["sc"]
        issuer = dev_account(ROLES["issuer"])
        self.bot_seller, self.bot_buyer = dev_account(BOT_SELLER), dev_account(BOT_BUYER)
        self.tokens = {name: next(iter(self.doc[name]["tokens"].values())) for name in CHAINS}
        deps = {name: ChainDeployment(**{k: v for k, v in self.doc[name].items() if k != "profile"}) for name in CHAINS}
        congesting = dev_account(CONGESTING_BUYER)
        # the bots hold, may receive and have approved the escrow (ERC-3643: an identity each, registered), on
        # both ST platforms
        for name in ST_CHAINS:
            await onboard_holder(self.chains[name], issuer, self.bot_seller, deps[name], kind="st", issue_amount=10**9)
            await onboard_holder(self.chains[name], issuer, self.bot_buyer, deps[name], kind="st", issue_amount=0)
            await onboard_holder(self.chains[name], issuer, congesting, deps[name], kind="st", issue_amount=0)
        await onboard_holder(self.sc, issuer, self.bot_buyer, deps["sc"], kind="sc", issue_amount=10**15)
        await onboard_holder(self.sc, issuer, self.bot_seller, deps["sc"], kind="sc", issue_amount=0)
        await onboard_holder(self.sc, issuer, congesting, deps["sc"], kind="sc", issue_amount=10**15)
        # its lock tips above the filler, and its fee cap (2 × base + tip) beats the filler's (3 × base + 50 gwei)
        # while the base fee is under 50 gwei: anvil orders its pool by fee cap
        self.congesting_tx = TxSender(self.sc, congesting, priority_fee_wei=BOT_CONGEST_TIP, rebroadcast_after=1.0)
        self.agent: IssuerAgent | None = None
        if deps["st"].standard == "erc3643":
            self.agent = IssuerAgent(self.st, issuer, trex.TrexSuite(**deps["st"].trex), deps["st"].escrow,
                                     dev_account(ROLES["seller"]).address, dev_account(ROLES["buyer"]).address)
        self.burner = await deploy(TxSender(self.sc, dev_account(FILLERS[0])), "GasBurner")
        self.bot_tx = {(name, "seller"): TxSender(self.chains[name], self.bot_seller, rebroadcast_after=1.0)
                       for name in CHAINS}
        self.bot_tx[("sc", "buyer")] = TxSender(self.sc, self.bot_buyer, rebroadcast_after=1.0)
        # a third party with its own account, tipping 50 gwei: its claims land before the relayer's 1 gwei ones
        # (on the permissioned platform every transaction pays 0: it races the relayer on arrival alone)
        self.front_runner = {name: TxSender(self.chains[name], dev_account(FRONT_RUNNER), priority_fee_wei=50 * 10**9,
                                            rebroadcast_after=1.0) for name in ST_CHAINS}
        self.api_port = free_port()
        self.api_token = "chaos-" + os.urandom(8).hex()
        seller, buyer = dev_account(ROLES["seller"]), dev_account(ROLES["buyer"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DVP_")} | {
            "DVP_ENV_FILE": "/nonexistent", **redis_env,
            "DVP_CONFIG_FILE": str(self._ledgers_file()),
            "DVP_TRUSTED_PTS_SIGNERS": dev_account(ROLES["pts"]).address,
            "DVP_PTS_DOMAIN_SALT": "0x" + DOMAIN_SALT.hex(),
            "DVP_PARTY_KEYS": f"{seller.key.hex()},{buyer.key.hex()}",
            "DVP_SECRET_KEY": generate_key(),
            "DVP_CONFIRMATIONS": str(self.cfg.confirmations), "DVP_BLOCK_TIME": str(self.cfg.block_time),
            "DVP_INCLUSION_DELAY": "1", "DVP_MAX_CLOCK_SKEW": str(self.cfg.max_skew),
            "DVP_MARGIN": str(self.cfg.margin),
            "DVP_ST_LOCK_DURATION": str(self.cfg.st_lock_duration), "DVP_POLL_INTERVAL": "0.1",
            "DVP_RPC_TIMEOUT": "2", "DVP_API_PORT": str(self.api_port), "DVP_API_TOKENS": self.api_token,
            "DVP_MAX_FEE_GWEI": str(self.cfg.max_fee_gwei), "DVP_LOG_LEVEL": os.environ.get("DVP_CHAOS_WORKER_LOG_LEVEL", "WARNING"),
        }
        # Δ as the relayer computes it: k × block time + inclusion + skew + margin
        import math

        self.delta = math.ceil(self.cfg.confirmations * self.cfg.block_time + 1 + self.cfg.max_skew + self.cfg.margin)
        self.start_worker()

    def _ledgers_file(self) -> Path:
        """The worker's three ledgers (as the devnet writes them), each reached through its lying primary and its
        standby proxy."""
        path = (self.cfg.workdir / "ledgers.toml").resolve()
        path.write_text(ledgers_toml(self.doc, {name: [self.liars[name].url, self.paths[name][1].url]
                                                for name in CHAINS}))
        return path

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
        for chain in self.chains.values():
            await chain.close()
        for primary, standby in self.paths.values():
            await primary.stop()
            await standby.stop()
        for liar in self.liars.values():
            await liar.stop()
        for node in self.nodes.values():
            node.stop()
        self._stop_redis()

    def _stop_redis(self) -> None:
        group = getattr(self, "group", None)
        if group is not None:
            group.stop()
        elif hasattr(self, "redis"):
            self.redis.stop()

    # ------------------------------------------------------------------ trades

    async def _post(self, http: aiohttp.ClientSession, body: str) -> tuple[int, dict[str, Any]]:
        async with http.post(f"http://127.0.0.1:{self.api_port}/v1/trades", data=body,
                             headers={"Authorization": f"Bearer {self.api_token}",
                                      "Content-Type": "application/json"}) as r:
            return r.status, await r.json()

    async def submit(self, http: aiohttp.ClientSession, body: str, deadline: float) -> tuple[int | None, str, str]:
        """Post until the worker answers (a PTS retries while the worker is down, or Redis is failing over):
        the status, and the error code and message, if any."""
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                status, doc = await self._post(http, body)
                if status < 500:
                    doc = doc if isinstance(doc, dict) else {}
                    return status, str(doc.get("error", "")), str(doc.get("message", ""))
                self.stats.api_errors[f"http_{status}:{doc.get('error', '') if isinstance(doc, dict) else ''}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                self.stats.api_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.3)
        return None, "", ""

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
        elif kind == "bot_congest":
            buyer = dev_account(CONGESTING_BUYER).address
        elif kind not in ("honest", "bot_front_run"):  # a front-runner is a third party to an honest trade
            buyer = self.bot_buyer.address
        deadline = time.monotonic() + 120
        # the trade's ST platform: the exchange lists securities on both. A front-runner outbids the relayer with a
        # tip, which the permissioned platform (every transaction at gas price 0) has no use for
        platform = "st" if kind == "bot_front_run" else rng.choice(ST_CHAINS)
        while True:
            now = await self._chain_now(self.chains[platform])
            ins = TradeInstruction(
                tradeId="0x" + os.urandom(32).hex(), stChainId=self.chains[platform].chain_id,
                stToken=self.tokens[platform], stAmount=rng.randint(1, 50), scChainId=self.sc.chain_id,
                scToken=self.tokens["sc"],
                scAmount=rng.randint(1, 10**6), sellerStAccount=seller, sellerScAccount=seller,
                buyerScAccount=buyer, buyerStAccount=buyer, deadline=now + 3 * self.cfg.st_lock_duration,
            )
            signed = sign_instruction(ins, dev_account(ROLES["pts"]).key, DOMAIN_SALT)
            body = signed.model_dump_json()
            status, code, message = await self.submit(http, body, deadline)
            if not (status == 422 and code == "compliance_refused" and time.time() < self.issuer_until
                    and platform == "st"):
                break
            # refused at intake while the issuer's agent acts on the token: not accepted, nothing locked; the
            # exchange matches a new trade a little later
            self.refused[code] += 1
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        self.instructions.append(ins.model_dump())
        self.kind_of[ins.tradeId] = kind
        self.st_of[ins.tradeId] = platform
        if status != 202:
            self.stats.checks_failed.append(f"trade {i}: submission answered {status} {code}: {message}")
            return
        self.accepted.add(ins.tradeId)
        # each replay gets its own 120 s to be answered: the first submission may have used up most of the trade's
        if rng.random() < 0.15:
            self.stats.faults["duplicate"] += 1
            status, code, _ = await self.submit(http, body, time.monotonic() + 120)
            if status != 202:
                self.stats.checks_failed.append(f"trade {i} {ins.tradeId}: duplicate answered {status} {code}, "
                                                "not 202")
        if rng.random() < 0.15:
            self.stats.faults["replay_conflict"] += 1
            other = sign_instruction(ins.model_copy(update={"scAmount": ins.scAmount + 1}),
                                     dev_account(ROLES["pts"]).key, DOMAIN_SALT)
            status, code, _ = await self.submit(http, other.model_dump_json(), time.monotonic() + 120)
            if status != 409:
                self.stats.checks_failed.append(f"trade {i} {ins.tradeId}: conflicting replay answered {status} "
                                                f"{code}, not 409")
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
                platform = self.st_of[ins.tradeId]
                st_slot = await self._slot(self.chains[platform], self.doc[platform]["escrow"], st_id)
                sc_slot = await self._slot(self.sc, self.doc["sc"]["escrow"], sc_id)
                if st_slot == bytes(32) and sc_slot == bytes(32) and await self._touched(ins):
                    return
            except Exception:  # noqa: BLE001 - chains stop, reorg and restart under us: poll again
                pass
            await asyncio.sleep(1.0)

    async def _touched(self, ins: TradeInstruction) -> bool:
        """True once the trade is over: an ST lock existed and is gone, or nothing can be locked any more."""
        platform = self.st_of[ins.tradeId]
        chain = self.chains[platform]
        now = await chain.now()
        logs = await chain.call(lambda w3: w3.eth.get_logs({
            "address": self.doc[platform]["escrow"], "fromBlock": self.doc[platform]["deploy_block"],
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
        platform = self.st_of[ins.tradeId]
        st_chain, st_escrow, sc_escrow = self.chains[platform], self.doc[platform]["escrow"], self.doc["sc"]["escrow"]
        self.stats.faults[kind] += 1
        if kind in ("bot_never_claims", "bot_late_claim"):
            secret = os.urandom(32)
            t_st = await self._chain_now(st_chain) + self.cfg.st_lock_duration
            await self.bot_tx[(platform, "seller")].transact(st_escrow, encode_call(
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
        st_lock = await self._wait_lock(st_chain, st_escrow, ins, ins.sellerStAccount, self.cfg.st_lock_duration)
        if st_lock is None:
            return
        if kind == "bot_front_run":
            await self._front_run(ins, st_lock)
            return
        if kind == "bot_relock":
            await self._relock(ins, st_lock)
            return
        if kind == "bot_congest":
            await self._congested_late_lock(ins, st_lock)
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
                platform = self.st_of[ins.tradeId]
                await self.front_runner[platform].transact(self.doc[platform]["escrow"], encode_call(
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

    async def _congested_late_lock(self, ins: TradeInstruction, st_lock: dict[str, Any]) -> None:
        """The attack of the safety-fixes issue: the right terms locked 6 s before T_sc while the coin ledger's
        blocks are full (one filler at a time), the bot's own lock priced to get in. A seller that revealed now
        would sit in the mempool past T_sc with its secret public."""
        t_sc = st_lock["timelock"] - self.delta
        while await self._chain_now(self.sc) < t_sc - 6:
            await asyncio.sleep(0.5)
        stop = asyncio.Event()
        filling = None
        tx = self.congesting_tx
        sent = await tx.send(self.doc["sc"]["escrow"], encode_call(
            E, "lockTokens", ins.trade_id_bytes, ins.scToken, ins.scAmount, ins.sellerScAccount,
            st_lock["hashlock"], t_sc))
        if not self._congesting:  # the blocks fill up behind the bot's own lock
            self._congesting = True
            filler = BlockFiller(self.sc, self.burner, [dev_account(a) for a in FILLERS], tip_wei=FILLER_TIP,
                                 max_txs=60)
            filling = asyncio.create_task(filler.run(stop))
        try:
            mined = asyncio.create_task(tx.wait(sent, timeout=30))
            await asyncio.sleep(self.rng.uniform(6.0, 12.0))
            receipt = await mined
            block = await self.sc.get_block(int(receipt["blockNumber"]))
            if int(block["timestamp"]) < t_sc:  # the attack happened: a right lock in time, under congestion
                self.stats.faults["bot_congest:locked_in_time"] += 1
        finally:
            if filling is not None:
                stop.set()
                await asyncio.gather(filling, return_exceptions=True)
                self._congesting = False

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
        await self.chains[name].rpc("evm_setTime", [int(time.time()) + self.time_offset[name]])
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
        """The largest difference between the chains' latest blocks' timestamps, skipping the seconds after a chain restart: a restarted anvil's
        latest block is its pre-stop block until it mines a new one (not a clock difference)."""
        if any(o.what.endswith("chain") and time.time() - o.end < 3.0 for o in self.outages[-4:]):
            return
        try:
            times = [int((await chain.get_block("latest"))["timestamp"]) for chain in self.chains.values()]
        except Exception:  # noqa: BLE001 - a chain is down: no sample
            return
        self.max_skew_seen = max(self.max_skew_seen, max(times) - min(times))

    async def faults(self) -> None:
        """Faults one at a time, in shuffled rounds of every kind (each kind as often). Chain outages take
        most of a run's time; more of them at once would leave the chains down most of it."""
        kinds = [k for k in self.covered_kinds() if k in INJECTED]
        deck: list[str] = []
        while not self.stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1 / self.cfg.fault_interval))
            if self.stop.is_set():
                return
            await self._sample_skew()
            fault = self._draw(deck, lambda: list(kinds))
            self.target, began = "", time.time()
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
                    name = self.target = self.rng.choice(CHAINS)
                    if self.chain_down[name]:
                        continue
                    node, chain = self.nodes[name], self.chains[name]
                    down = (self.rng.uniform(0.5, self.delta * 0.6) if fault == "chain_stop_short"
                            else self.rng.uniform(self.delta * 1.05, self.delta * 1.3))
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
                    chain = self.chains[self._aim(CHAINS)]
                    if self.chain_down[chain.name]:
                        continue
                    await chain.rpc("anvil_reorg", [self.rng.randint(1, self.cfg.confirmations - 1) or 1, []])
                    await self._set_clock(chain.name)  # anvil_reorg sets the chain's clock back ~0.5-1 s each time
                elif fault == "reorg_deep":
                    chain = self.chains[self._aim(CHAINS)]
                    if self.chain_down[chain.name]:
                        continue
                    depth = self.rng.randint(self.cfg.confirmations + 1, self.cfg.confirmations + 4)
                    await self._reorg_deep(chain, depth)
                    if chain.name == "st" and self.agent is not None:  # an undo taken out puts an action back
                        started = time.time()
                        lifted = await self.agent.lift_all()
                        if lifted:
                            self.issuer_acts += [(f"{a} (back after a reorg)", started - 1.0, time.time(), "")
                                                 for a in lifted]
                elif fault == "fee_spike":  # the permissioned platform has no fee market (berlin, gas price 0)
                    chain = self.chains[self._aim(("st", "sc"))]
                    if self.chain_down[chain.name]:
                        continue
                    gwei = self.rng.uniform(20, 500)
                    await chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(int(gwei * 10**9))])
                elif fault == "issuer_action":
                    await self._issuer_action()
                elif fault in NET_FAULTS:
                    await self._net_fault(fault)
                elif fault == "redis_restart":
                    started = time.time()
                    # one redis-server: SIGKILL and restart it; a Sentinel group: the replica (the master
                    # refuses writes until it is back: min-replicas-to-write)
                    group = self.group
                    redis_node = self.redis if group is None else next(
                        n for n in group.nodes if n is not group.master())
                    redis_node.stop(kill=True)
                    await asyncio.sleep(self.rng.uniform(0.2, 2.0))
                    redis_node.start()
                    if self.group is not None:
                        await asyncio.to_thread(self.group.wait_master_writable, 30)
                    self.outages.append(Outage("redis", started, time.time()))
                elif fault == "redis_failover":
                    assert self.group is not None
                    started = time.time()
                    try:
                        await asyncio.to_thread(self.group.fail_over)
                        await asyncio.to_thread(self.group.wait_master_writable, 30)
                    finally:  # a failover that went wrong is downtime all the same
                        self.outages.append(Outage("redis", started, time.time()))
                elif fault == "clock_skew":
                    # each chain's clock runs 0..max_skew s ahead of wall time, so no two differ by more
                    # than the bound Δ is built on, and a restart's first block (anvil stamps it before the
                    # clock is set again) is off by at most that much too
                    name = self.target = self.rng.choice(CHAINS)
                    if self.chain_down[name]:
                        continue
                    shift = self.rng.randint(0, self.cfg.max_skew) - self.time_offset[name]
                    self.time_offset[name] += shift
                    await self._set_clock(name)
                self.stats.faults[fault] += 1
                if self.target:
                    self.target_counts[(fault, self.target)] += 1
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                self.stats.api_errors[f"inject:{fault}:{type(exc).__name__}"] += 1
            self._journal(fault, began)

    def _aim(self, names: tuple[str, ...]) -> str:
        """One of `names`, drawn, as the chain the fault being injected acts on (faults.jsonl)."""
        self.target = self.rng.choice(names)
        return self.target

    def _journal(self, fault: str, began: float) -> None:
        """One line per injected fault in faults.jsonl (kind, chain, wall-clock start and end): what a violation's
        trade went through is read beside worker.log."""
        with open(self.cfg.workdir / "faults.jsonl", "a") as out:
            out.write(json.dumps({"fault": fault, "chain": self.target, "start": round(began, 3),
                                  "end": round(time.time(), 3)}) + "\n")

    async def _net_fault(self, fault: str) -> None:
        """One network fault on one chain's paths, for a while, then the paths are clear again. A partition
        counts as that chain's outage (from the worker's side it is one); the others leave the standby path."""
        name = self.target = self.rng.choice(CHAINS)
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
        elif fault == "node_stalled":
            liar = self.liars[name]
            liar.frozen = await self.chains[name].block_number()
            await asyncio.sleep(self.rng.uniform(3.0, self.delta))
            liar.frozen = None
        elif fault == "node_drops_logs":
            self.liars[name].drop_logs = True
            await asyncio.sleep(self.rng.uniform(1.0, self.delta))
            self.liars[name].drop_logs = False
        else:  # net_partition
            started = time.time()
            primary.set(BLACKHOLE)
            standby.set(BLACKHOLE)
            await asyncio.sleep(self.rng.uniform(0.5, self.delta * 1.3))
            standby.set(PASS)
            self.outages.append(Outage(f"{name} chain", started, time.time()))
        primary.set(PASS)

    async def _reorg_deep(self, chain: EvmChain, depth: int) -> None:
        """anvil_reorg deeper than k, with the evidence of what it took out: the escrow events of blocks that were
        already final (k deep) and that the new chain does not have, keyed by (chain, swap id)."""
        head = await chain.block_number()
        span = {"address": self.doc[chain.name]["escrow"], "fromBlock": max(0, head - depth + 1), "toBlock": head}
        before = await chain.call(lambda w3: w3.eth.get_logs(span))
        await chain.rpc("anvil_reorg", [depth, []])
        at = time.time()
        await self._set_clock(chain.name)
        self.deep_reorgs.append((chain.name, at, depth))
        try:
            await self._removed_by_reorg(chain, span, before, head, depth, at)
        except Exception as exc:  # noqa: BLE001 - the reorg happened; only its evidence is missing (reported)
            self.stats.api_errors[f"evidence:reorg_deep:{type(exc).__name__}"] += 1

    async def _removed_by_reorg(self, chain: EvmChain, span: dict[str, Any], before: list[Any], head: int,
                                depth: int, at: float) -> None:
        k = self.cfg.confirmations
        after = {bytes(lg["transactionHash"]) for lg in await chain.call(lambda w3: w3.eth.get_logs(
            {**span, "toBlock": "latest"}))}
        from hexbytes import HexBytes
        from web3 import AsyncWeb3

        from adapters.contracts import abi

        escrow = AsyncWeb3().eth.contract(abi=abi(E))
        locked_topic = bytes(HexBytes(escrow.events.Locked().topic))
        for lg in before:
            if bytes(lg["transactionHash"]) in after or int(lg["blockNumber"]) > head - k + 1 or len(lg["topics"]) < 2:
                continue  # still there, or not final yet when it went (within the guarantee)
            topic = bytes(lg["topics"][1])
            if bytes(lg["topics"][0]) == locked_topic:
                sender = escrow.events.Locked().process_log(lg)["args"]["sender"]
                topic = swap_id(sender, topic)
            self.reorged_out.setdefault((chain.name, topic), (at, f"{chain.name} reorg of depth {depth} took out "
                                                                  f"block {int(lg['blockNumber'])} (head {head})"))

    async def _issuer_action(self) -> None:
        """One agent action on the ERC-3643 ST, held for 1 s to 1.5 Δ, then undone (an interval "st issuer")."""
        assert self.agent is not None
        action = self.rng.choice(ACTIONS)
        self.target = "st"  # the ERC-3643 platform
        started = time.time()
        self.issuer_until = float("inf")
        try:
            undo = await self.agent.act(action, self.rng)
            try:
                await asyncio.sleep(self.rng.uniform(1.0, 1.5 * self.delta))
            finally:
                await undo()
        finally:
            self.issuer_until = time.time() + 3.0
            # only actions on every holder, or on this run's relayer buyer, can block a given trade's ST claim
            self.issuer_acts.append((action, started, time.time(),
                                     self.agent.buyer if action in ("freeze_buyer", "delete_buyer_identity") else ""))
        self.stats.faults[f"issuer:{action}"] += 1

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
            for node in self.nodes.values():
                node.stop()
            self._stop_redis()
            for paths in getattr(self, "paths", {}).values():
                for proxy in paths:
                    await proxy.stop()
            for liar in getattr(self, "liars", {}).values():
                await liar.stop()
            raise

    async def _run(self, t0: float) -> int:
        await self.setup()
        self.echo(f"chaos: {self.cfg.trades} trades (more until every kind came up {self.cfg.fault_rounds} times), "
                  f"seed {self.cfg.seed}, Δ={self.delta}s, "
                  f"k={self.cfg.confirmations}, workdir {self.cfg.workdir}")
        injector = asyncio.create_task(self.faults())
        started = 0
        done = 0

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def slot() -> None:
                """One of `concurrency` lanes: trades one after another, until N are started and every fault and
                bot kind has come up `fault_rounds` times (a run's length follows from what it must cover)."""
                nonlocal started, done
                while started < self.cfg.trades or not self.rounds_done():
                    i = started
                    started += 1
                    try:
                        await self.one_trade(http, i)
                    except Exception as exc:  # noqa: BLE001 - the harness reports, the checker judges the chains
                        self.stats.checks_failed.append(f"trade {i}: runner error {type(exc).__name__}: {exc}")
                    done += 1
                    if done % max(1, self.cfg.trades // 20) == 0:
                        self.echo(f"  {done} trades resolved ({self.cfg.trades} asked), {time.monotonic() - t0:.0f}s,"
                                  f" faults so far {sum(self.stats.faults.values())}, fewest of a kind "
                                  f"{self.fewest()}")

            try:
                await asyncio.wait_for(asyncio.gather(*(slot() for _ in range(self.cfg.concurrency))),
                                       self.cfg.max_seconds)
            except asyncio.TimeoutError:
                self.echo("chaos: time bound reached; finishing")
            if not self.rounds_done():
                kind, count = self.fewest()
                self.stats.checks_failed.append(f"coverage: {kind} came up {count} times, fewer than the "
                                                f"{self.cfg.fault_rounds} asked (time bound {self.cfg.max_seconds}s)")
        self.stop.set()
        await injector
        if self._background:
            await asyncio.gather(*self._background)
        for node in self.nodes.values():
            if not port_open(node.port):
                node.start()
        for redis_node in (self.group.nodes if self.group is not None else [self.redis]):
            if not port_open(redis_node.port):
                redis_node.start()
        if self.worker is None or self.worker.poll() is not None:
            self.start_worker()
        if self.agent is not None:
            lifted = await self.agent.lift_all()
            if lifted:
                self.echo(f"issuer actions still in force at the end (a reorg brought them back), lifted: {lifted}")
        # make every timelock pass, give the relayer time to refund what is left
        for chain in self.chains.values():
            await chain.rpc("evm_increaseTime", [4 * self.cfg.st_lock_duration])
            await chain.rpc("evm_mine", [])
        result = await self.settle_out()
        await self._find_lost()
        await self.teardown()
        self.report(result, time.monotonic() - t0)
        (self.cfg.workdir / "outcomes.json").write_text(json.dumps({
            "trades": {t: {"outcome": o, "kind": self.kind_of.get(t), "st_platform": self.st_of.get(t),
                           "claim_window": self.windows.get(t)}
                       for t, o in self.outcomes.items()},
            "outages": [[o.what, o.start, o.end] for o in self.outages], "clock_offsets": self.clocks.changes,
            "budget_seconds": self.delta - self.cfg.margin, "lost_blocks": self.lost_blocks,
            "lost_trades": self.lost, "evidence": self.evidence, "deep_reorgs": self.deep_reorgs,
            "issuer_actions": self.issuer_acts, "refused": dict(self.refused),
            "faults": dict(self.stats.faults),
            "faults_by_chain": {f"{k}:{c}": n for (k, c), n in sorted(self.target_counts.items())}}, indent=1))
        bad = sum(result[v] for v in VIOLATIONS) + len(self.stats.checks_failed) + result["PENDING"] + len(self.lost)
        return 1 if bad else 0

    def covered_kinds(self) -> list[str]:
        """The fault and bot kinds this run injects (issuer actions only on an ERC-3643 ST, failovers only with
        a Sentinel group); duplicates and conflicting replays ride along with trades at random."""
        return [k for k in (*INJECTED, *BOT_KINDS) if (k != "issuer_action" or self.agent is not None)
                and (k != "redis_failover" or self.group is not None)]

    def fewest(self) -> tuple[str, int]:
        return min(((k, self.stats.faults[k]) for k in self.covered_kinds()), key=lambda kv: kv[1])

    def rounds_done(self) -> bool:
        return self.fewest()[1] >= self.cfg.fault_rounds

    async def _find_lost(self) -> None:
        """Every trade answered 202 must still be known to the relayer (a Redis failover must not lose one)."""
        limit = time.monotonic() + 300  # the whole lookup is bounded; a worker that never answers fails the run
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for tid in sorted(self.accepted):
                while time.monotonic() < limit:
                    try:
                        async with http.get(f"http://127.0.0.1:{self.api_port}/v1/trades/{tid}", headers={
                                "Authorization": f"Bearer {self.api_token}"}) as r:
                            if r.status == 404:
                                self.lost.append(tid)
                            if r.status in (200, 404):
                                break
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                    await asyncio.sleep(1.0)
                else:
                    self.stats.checks_failed.append(f"trade {tid}: the API never answered its lookup")

    async def settle_out(self, timeout: float = 120.0) -> Counter[str]:
        limit = time.monotonic() + timeout
        while True:
            logs = await read_all(self.doc, CHAINS)
            self.outcomes = classify_all(self.instructions, logs, self.delta)
            result = Counter(self.outcomes.values())
            if (not result["STUCK"] and not result["PENDING"]) or time.monotonic() > limit:
                break
            await asyncio.sleep(2)
        await self._explain(logs)
        return Counter(self.outcomes.values())

    async def _explain(self, logs: dict[int, ChainLogs]) -> None:
        """Date every ONE-SIDED trade's claim window and set apart those whose injected outages left less than
        Δ − margin seconds to claim in: the HTLC limit (chaos.timeline). All others stay violations."""
        budget = float(self.delta - self.cfg.margin)
        for ins in self.instructions:
            tid = ins["tradeId"]
            if self.outcomes.get(tid) != "ONE-SIDED":
                continue
            st, sc = of_trade(ins, logs)
            st_leg, sc_leg = legs(ins, st, sc)
            platform = self.st_of.get(tid, "st")
            trade_id = bytes.fromhex(tid[2:])
            # a deep reorg took out a final event of this trade's own swaps (its seller's ST swap, its buyer's SC
            # swap; not a bot's or a stray lock under the same trade id)
            touched = [self.reorged_out[key] for key in ((platform, swap_id(ins["sellerStAccount"], trade_id)),
                                                         ("sc", swap_id(ins["buyerScAccount"], trade_id)))
                       if key in self.reorged_out]
            done, done_logs, missing, name = ((sc_leg, sc, st_leg, platform) if sc_leg.claimed
                                              else (st_leg, st, sc_leg, "sc"))
            revealed_on = "sc" if name != "sc" else platform
            if done.claimed_block is None or missing.locked is None:
                if touched:  # the missing leg's lock or claim is gone from the final chain
                    self.outcomes[tid], self.evidence[tid] = DEEP_REORG, "; ".join(why for _, why in touched)
                continue
            revealed = await done_logs.block_time(done.claimed_block)
            observe = self.cfg.confirmations * self.cfg.block_time
            window = claim_window(name, revealed, revealed_on, missing.locked["timelock"],
                                  self.clocks, self.outages, budget, observe=observe)
            self.windows[tid] = window.as_dict()
            # an issuer action excuses a missing ST claim only if it hit this trade (every holder, or its buyer) and,
            # when our relayer revealed, began after its last look before revealing (≈ the reveal block; 2 s for the
            # check, the inclusion and the clocks): one in force before should have held the secret back. When the
            # counterparty (a bot seller) chose to reveal, any action in force after the reveal counts.
            reveal_wall = self.clocks.to_wall(revealed_on, revealed)
            ours = ins["sellerScAccount"] != self.bot_seller.address
            hits = [(a, s0, e0) for a, s0, e0, who in self.issuer_acts
                    if name == "st" and who in ("", ins["buyerStAccount"])
                    and (s0 >= reveal_wall - 2.0 if ours else e0 > reveal_wall)]
            with_issuer = claim_window(name, revealed, revealed_on, missing.locked["timelock"],
                                       self.clocks, self.outages + [Outage("st issuer", s0, e0) for _, s0, e0 in hits],
                                       budget, observe=observe, also=frozenset({"st issuer"}))
            if window.beyond_guarantee:
                self.outcomes[tid] = BEYOND_GUARANTEE
            elif with_issuer.beyond_guarantee:
                acts = [f"{a} {max(s0, with_issuer.start) - with_issuer.start:+.1f}s to "
                        f"{min(e0, with_issuer.end) - with_issuer.start:+.1f}s"
                        for a, s0, e0 in hits if s0 < with_issuer.end and e0 > with_issuer.start]
                self.outcomes[tid] = ISSUER_ACTED
                self.evidence[tid] = (f"reveal to T_st {with_issuer.end - with_issuer.start:.1f}s, issuer "
                                      f"{', '.join(acts)} (after the reveal), {with_issuer.up:.1f}s left to claim")
            elif any(window.start - 2 * self.delta <= at <= window.end for at, _ in touched):
                # only a reorg around the claim window: one long before it the relayer had time to recover from
                self.outcomes[tid], self.evidence[tid] = DEEP_REORG, "; ".join(why for _, why in touched)

    def report(self, result: Counter[str], seconds: float) -> None:
        self.echo("")
        self.echo(f"{'outcome (checker, chain reads only)':<40}{'trades':>8}")
        for k in ("SETTLED", "ABORTED", "ONE-SIDED", "STUCK", "BAD-TERMS-CLAIMED", "PENDING"):
            self.echo(f"  {k:<38}{result.get(k, 0):>8}")
        budget = self.delta - self.cfg.margin
        self.echo(f"  {'LOST (accepted, unknown to the API)':<38}{len(self.lost):>8}")
        self.echo(f"  {'ONE-SIDED, outages left < Δ-margin':<38}{result.get(BEYOND_GUARANTEE, 0):>8}")
        self.echo(f"    (< {budget}s of service between the reveal and the other leg's timelock: the HTLC limit, not "
                  "counted as a violation; see docs/failure-modes.md)")
        for tid, w in self.windows.items():
            if self.outcomes[tid] == BEYOND_GUARANTEE:
                self.echo(f"    {tid[:12]} {self.kind_of.get(tid)}: {w['unclaimed']} claim missing, window "
                          f"{w['end'] - w['start']:.1f}s, down {w['down']:.1f}s, up {w['up']:.1f}s")
        for label in (ISSUER_ACTED, DEEP_REORG):
            self.echo(f"  {label:<38}{result.get(label, 0):>8}")
            for tid, why in self.evidence.items():
                if self.outcomes[tid] == label:
                    self.echo(f"    {tid[:12]} {self.kind_of.get(tid)}: {why}")
        gone = [tid for tid, o in self.outcomes.items() if o == LOCK_GONE]
        self.echo(f"  {'lock gone without an event':<38}{len(gone):>8}")
        if gone:
            self.echo("    (a lock in the logs with no Claimed/Refunded event whose escrow slot is empty at the same "
                      "block: the chain's logs and state disagree, nothing is locked; not a relayer outcome)")
        for tid in gone:
            self.echo(f"    {tid[:12]} {self.kind_of.get(tid)}")
        if self.refused:
            self.echo("refused at intake while the issuer acted (not accepted, nothing locked): " + ", ".join(
                f"{k}={v}" for k, v in sorted(self.refused.items())))
        self.echo(f"{'trade kind':<24}{'count':>7}{'SETTLED':>9}{'ABORTED':>9}{'other':>7}")
        for k, v in sorted(self.stats.kinds.items()):
            outs = Counter(o for t, o in self.outcomes.items() if self.kind_of.get(t) == k)
            other = v - outs["SETTLED"] - outs["ABORTED"]
            self.echo(f"  {k:<22}{v:>7}{outs['SETTLED']:>9}{outs['ABORTED']:>9}{other:>7}")
        self.echo(f"{'ST platform':<24}{'trades':>7}{'SETTLED':>9}{'ABORTED':>9}{'other':>7}")
        for name in ST_CHAINS:
            outs = Counter(o for t, o in self.outcomes.items() if self.st_of.get(t) == name)
            total = sum(outs.values())
            self.echo(f"  {name:<22}{total:>7}{outs['SETTLED']:>9}{outs['ABORTED']:>9}"
                      f"{total - outs['SETTLED'] - outs['ABORTED']:>7}")
        self.echo(f"{'fault injected':<40}{'count':>8}  by chain")
        for k in FAULTS + BOT_KINDS:
            by_chain = ", ".join(f"{c} {self.target_counts[(k, c)]}" for c in CHAINS if self.target_counts[(k, c)])
            self.echo(f"  {k:<38}{self.stats.faults.get(k, 0):>8}  {by_chain}".rstrip())
            if k == "issuer_action":
                for action in ACTIONS:
                    self.echo(f"    {action:<36}{self.stats.faults.get(f'issuer:{action}', 0):>8}")
            if k == "bot_congest":
                self.echo(f"    {'its right lock mined before T_sc':<36}"
                          f"{self.stats.faults.get('bot_congest:locked_in_time', 0):>8}")
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
