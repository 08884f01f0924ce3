"""The benchmark. Everything runs side by side in one invocation on one private devnet, so ratios are fair:

1. raw ceiling: signed ERC-20 transfers/s the two chains accept from this Python client (pipelined sends)
2. latency: trades one at a time (match -> SETTLED, seconds and blocks) against the protocol floor
3. throughput: M trades submitted at once, batching off (DVP_BATCH_MAX=1) then on (1000)
4. with --rate: open-loop constant-arrival runs at each rate (bench/open_loop.py)
For each relayer run the worker is a separate process (CPU and peak RSS read from /proc), and Redis memory
per settled trade is read from INFO.
"""

from __future__ import annotations

import asyncio
import shutil
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from adapters.contracts import encode_call
from adapters.evm import EvmChain, TxSender
from deploy.devnet import ROLES, DevnetOptions, _deploy, dev_account
from deploy.processes import AnvilProcess, RedisProcess, free_port, port_open
from relayer.protocol.instruction import TradeInstruction, sign_instruction
from relayer.secrets import generate_key
from relayer.store import Store, trade_key


# this run's trade-instruction domain (DVP_PTS_DOMAIN_SALT): the workers verify what the run signs with it
DOMAIN_SALT = os.urandom(32)

@dataclass
class BenchConfig:
    trades: int = 200
    latency_trades: int = 10
    raw_transfers: int = 1000  # per chain
    block_time: float = 1.0
    confirmations: int = 1
    workdir: Path = Path(".bench")
    rates: tuple[float, ...] = ()  # open-loop arrival rates (trades/s), each for `duration` seconds
    duration: float = 20.0
    signer: str = "env"  # where the workers' party keys are: "env" (raw) or "pkcs11" (SoftHSM2)


async def _post_trade(http: aiohttp.ClientSession, body: str) -> str:
    """Submit one signed instruction to a bench worker's API; its trade id."""
    async with http.post("/v1/trades", data=body, headers={
            "Authorization": "Bearer bench", "Content-Type": "application/json"}) as resp:
        assert resp.status == 202, await resp.text()
        return (await resp.json())["trade_id"]


async def _decisions(port: int) -> float:
    """The worker's dvp_trade_decisions_total (event-driven work: about 5 per DvP when nothing is re-decided)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics",
                                                         headers={"Authorization": "Bearer bench"}) as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("dvp_trade_decisions_total"))


def _vm_kb(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in kB."""
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(f"{field}:"))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Bench:
    def __init__(self, cfg: BenchConfig, echo: Any = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.out: dict[str, Any] = {"config": {"block_time_s": cfg.block_time, "confirmations": cfg.confirmations,
                                               "trades": cfg.trades, "signer": cfg.signer}}

    async def setup(self) -> None:
        d = self.cfg.workdir
        shutil.rmtree(d / "redis", ignore_errors=True)  # a fresh Redis: no trades from an earlier run
        d.mkdir(parents=True, exist_ok=True)
        self.st_node = AnvilProcess(18201, free_port(), self.cfg.block_time, log_file=d / "anvil-st.log").start()
        self.sc_node = AnvilProcess(18202, free_port(), self.cfg.block_time, log_file=d / "anvil-sc.log").start()
        self.redis = RedisProcess(free_port(), d / "redis", appendfsync="everysec").start()
        self.doc = await _deploy(DevnetOptions(st_standard="own"), self.st_node.url, self.sc_node.url, self.redis.url)
        self.st, self.sc = EvmChain("st", [self.st_node.url]), EvmChain("sc", [self.sc_node.url])
        self.signer_env: dict[str, str] = {}
        if self.cfg.signer == "pkcs11":  # the party keys in a SoftHSM2 token, none in the workers' environment
            from bench.signing import bench_hsm

            hsm_env, refs = bench_hsm(d, {r: bytes(dev_account(ROLES[r]).key) for r in ("seller", "buyer")})
            self.signer_env = hsm_env | {"DVP_PARTY_KEYS": "", "DVP_SIGNERS": refs}
        await self.st.connect()
        await self.sc.connect()

    async def teardown(self) -> None:
        await self.st.close()
        await self.sc.close()
        self.st_node.stop()
        self.sc_node.stop()
        self.redis.stop()

    # ------------------------------------------------------------------ raw ceiling

    async def raw_ceiling(self) -> float:
        """Pipelined, pre-signed-as-we-go ERC-20 transfers on both chains at once; mined tx per second."""
        seller, buyer = dev_account(ROLES["seller"]), dev_account(ROLES["buyer"])
        jobs = [(self.st, seller, next(iter(self.doc["st"]["tokens"].values())), buyer.address),
                (self.sc, buyer, next(iter(self.doc["sc"]["tokens"].values())), seller.address)]

        async def pump(chain: EvmChain, acct: Any, token: str, to: str) -> int:
            sender = TxSender(chain, acct)
            data = encode_call("SecurityToken", "transfer", to, 1)
            sent = [await sender.send(token, data, gas=80_000) for _ in range(self.cfg.raw_transfers)]
            for tx in sent:
                await sender.wait(tx, poll=0.05)
            return len(sent)

        t0 = time.monotonic()
        counts = await asyncio.gather(*(pump(*j) for j in jobs))
        elapsed = time.monotonic() - t0
        tps = sum(counts) / elapsed
        self.out["raw_ceiling"] = {"erc20_transfers": sum(counts), "seconds": round(elapsed, 2),
                                   "tx_per_s": round(tps, 1)}
        return tps

    # ------------------------------------------------------------------ relayer runs

    def _env(self, db: int, batch_max: int, api_port: int) -> dict[str, str]:
        seller, buyer = dev_account(ROLES["seller"]), dev_account(ROLES["buyer"])
        st, sc = self.doc["st"], self.doc["sc"]
        return {k: v for k, v in os.environ.items() if not k.startswith("DVP_")} | {
            "DVP_ENV_FILE": "/nonexistent",
            "DVP_REDIS_URL": f"redis://127.0.0.1:{self.redis.port}/{db}",
            "DVP_ST_RPC_URL": st["rpc_url"], "DVP_ST_WS_URL": st["rpc_url"].replace("http", "ws"),
            "DVP_ST_ESCROW": st["escrow"], "DVP_ST_TOKENS": ",".join(st["tokens"].values()),
            "DVP_ST_START_BLOCK": str(st["deploy_block"]),
            "DVP_SC_RPC_URL": sc["rpc_url"], "DVP_SC_WS_URL": sc["rpc_url"].replace("http", "ws"),
            "DVP_SC_ESCROW": sc["escrow"], "DVP_SC_TOKENS": ",".join(sc["tokens"].values()),
            "DVP_SC_START_BLOCK": str(sc["deploy_block"]),
            "DVP_TRUSTED_PTS_SIGNERS": dev_account(ROLES["pts"]).address,
            "DVP_PTS_DOMAIN_SALT": "0x" + DOMAIN_SALT.hex(),
            "DVP_PARTY_KEYS": f"{seller.key.hex()},{buyer.key.hex()}",
            "DVP_SECRET_KEY": generate_key(), "DVP_CONFIRMATIONS": str(self.cfg.confirmations),
            "DVP_BLOCK_TIME": str(self.cfg.block_time), "DVP_POLL_INTERVAL": "0.5",
            "DVP_BATCH_MAX": str(batch_max), "DVP_API_PORT": str(api_port), "DVP_API_TOKENS": "bench",
            "DVP_LOG_LEVEL": "WARNING",
        } | self.signer_env

    async def _instruction(self, i: int) -> str:
        st, sc = self.doc["st"], self.doc["sc"]
        seller, buyer = dev_account(ROLES["seller"]).address, dev_account(ROLES["buyer"]).address
        ins = TradeInstruction(
            tradeId="0x" + os.urandom(32).hex(), stChainId=st["chain_id"], stToken=next(iter(st["tokens"].values())),
            stAmount=1 + i % 7, scChainId=sc["chain_id"], scToken=next(iter(sc["tokens"].values())),
            scAmount=1000 + i, sellerStAccount=seller, sellerScAccount=seller, buyerScAccount=buyer,
            buyerStAccount=buyer, deadline=await self.st.now() + 3600)
        return sign_instruction(ins, dev_account(ROLES["pts"]).key, DOMAIN_SALT).model_dump_json()

    async def start_worker(self, label: str, db: int, batch_max: int, extra_env: dict[str, str] | None = None
                           ) -> tuple[subprocess.Popen, Any, int]:
        """A `dvp-relayer run` process with its API on a free port, ready to take trades."""
        port = free_port()
        exe = Path(sys.executable).with_name("dvp-relayer")
        log = open(self.cfg.workdir / f"worker-{label}.log", "wb")
        env = self._env(db, batch_max, port) | (extra_env or {})
        proc = subprocess.Popen([str(exe), "run"], env=env, stdout=log, stderr=log)
        while not port_open(port):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let the worker finish its start-up round
        return proc, log, port

    @staticmethod
    def stop_worker(proc: subprocess.Popen, log: Any) -> None:
        proc.terminate()
        proc.wait(30)
        log.close()

    async def relayer_run(self, label: str, db: int, batch_max: int, n: int, sequential: bool) -> dict[str, Any]:
        proc, log, port = await self.start_worker(label, db, batch_max)
        store = Store.from_url(f"redis://127.0.0.1:{self.redis.port}/{db}")
        r = aioredis.from_url(f"redis://127.0.0.1:{self.redis.port}/{db}")
        try:
            mem0 = int((await r.info("memory"))["used_memory"])
            bodies = [await self._instruction(i) for i in range(n)]
            ids: list[str] = []
            heads: dict[str, int] = {}
            t0 = time.monotonic()
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                if sequential:
                    for body in bodies:
                        head = await self.st.block_number()
                        tid = await _post_trade(http, body)
                        heads[tid] = head
                        ids.append(tid)
                        await self._wait_settled(store, [tid])
                else:
                    head = await self.st.block_number()
                    ids = list(await asyncio.gather(*(_post_trade(http, b) for b in bodies)))
                    heads = {t: head for t in ids}
                    await self._wait_settled(store, ids)
            elapsed = time.monotonic() - t0
            limit = time.monotonic() + 30  # finished trades are archived compactly a few seconds later
            while time.monotonic() < limit:
                async with r.pipeline(transaction=False) as pipe:
                    for tid in ids:
                        pipe.hexists(trade_key(tid), "archive")
                    if all(await pipe.execute()):
                        break
                await asyncio.sleep(0.5)
            mem1 = int((await r.info("memory"))["used_memory"])
            # exact: the trade's own key plus its entry in the all-trades index (audit lists are archived)
            per_trade = 0
            for tid in ids:
                per_trade += int(await r.memory_usage(trade_key(tid), samples=0) or 0)
                per_trade += int(await r.memory_usage(f"dvp:audit:{tid}", samples=0) or 0)
            index = int(await r.memory_usage("dvp:all", samples=0) or 0) / max(1, int(await r.zcard("dvp:all")))
            cpu, rss = _proc_usage(proc.pid)
            out = await self._summarise(store, ids, heads, elapsed, cpu, rss, per_trade / n + index)
            out["redis_used_memory_delta_per_trade"] = round((mem1 - mem0) / n)
            out["decisions_per_dvp"] = round(await _decisions(port) / n, 2)
            return out
        finally:
            self.stop_worker(proc, log)
            await store.close()
            await r.aclose()

    async def _wait_settled(self, store: Store, ids: list[str], timeout: float = 600) -> None:
        limit = time.monotonic() + timeout
        pending = set(ids)
        while pending and time.monotonic() < limit:
            for tid in list(pending):
                rec = await store.get(tid)
                if rec is not None and rec.state.value == "SETTLED":
                    pending.discard(tid)
                elif rec is not None and rec.state.value in ("ABORTED", "REJECTED"):
                    raise RuntimeError(f"trade {tid} ended {rec.state.value}")
            await asyncio.sleep(0.05)
        if pending:
            raise RuntimeError(f"{len(pending)} trades not settled in {timeout}s")

    async def _summarise(self, store: Store, ids: list[str], heads: dict[str, int], elapsed: float, cpu: float,
                         rss_kb: int, redis_bytes: float) -> dict[str, Any]:
        lat, blocks, reaction, gas, txs = [], [], [], 0, set()
        for tid in ids:
            audit = await store.audit(tid)
            t_acc = audit[0]["t"]
            t_done = next(e["t"] for e in audit if e["event"] == "state" and e.get("to") == "SETTLED")
            lat.append(t_done - t_acc)
            st_claim = next(e for e in audit if e["event"] == "claim_st_mined")
            blocks.append(st_claim["block"] - heads[tid])
            reaction += [e["reaction_ms"] for e in audit if e["event"].endswith("_sent") and "reaction_ms" in e]
            gas += sum(e.get("gas", 0) for e in audit if e["event"].endswith("_mined"))
            txs |= {e["tx"] for e in audit if e["event"].endswith("_mined")}
        return {
            "trades": len(ids), "seconds": round(elapsed, 2), "dvp_per_s": round(len(ids) / elapsed, 2),
            "latency_s": {"p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2)},
            "latency_blocks": {"p50": pct(blocks, 0.5), "p99": pct(blocks, 0.99)},
            "reaction_ms": {"p50": round(pct(reaction, 0.5), 1), "p99": round(pct(reaction, 0.99), 1)},
            "gas_per_dvp": round(gas / len(ids)), "transactions": len(txs),
            "relayer_cpu_s": round(cpu, 2), "relayer_peak_rss_mb": round(rss_kb / 1024, 1),
            "redis_bytes_per_trade": round(redis_bytes),
        }

    async def run(self) -> dict[str, Any]:
        await self.setup()
        try:
            from bench.signing import signing_latency

            self.echo("signing: one transaction, each signer kind side by side ...")
            self.out["signing"] = signing_latency(self.cfg.workdir / "signing",
                                                  hsm_refs=self.signer_env.get("DVP_SIGNERS", ""))
            self.echo(f"  {json.dumps(self.out['signing'])}")
            self.echo("raw ceiling: pipelined ERC-20 transfers on both chains ...")
            tps = await self.raw_ceiling()
            self.echo(f"  {tps:.0f} tx/s")
            self.echo(f"latency: {self.cfg.latency_trades} trades one at a time ...")
            self.out["latency_run"] = await self.relayer_run("latency", 1, 50, self.cfg.latency_trades, True)
            self.echo(f"  {json.dumps(self.out['latency_run'])}")
            for label, db, batch in (("batching_off", 2, 1), ("batching_on", 3, 1000)):
                self.echo(f"throughput, {label}: {self.cfg.trades} trades at once ...")
                self.out[label] = await self.relayer_run(label, db, batch, self.cfg.trades, False)
                self.echo(f"  {json.dumps(self.out[label])}")
            if self.cfg.rates:
                from bench.open_loop import open_loop

                self.out["open_loop"] = await open_loop(self, list(self.cfg.rates), self.cfg.duration)
        finally:
            await self.teardown()
        self.out["targets"] = self.targets(tps)
        return self.out

    def targets(self, raw_tps: float) -> dict[str, Any]:
        """The goals of issue 15 against this run's figures; each says where its bound comes from."""
        on, off, lat = self.out["batching_on"], self.out["batching_off"], self.out["latency_run"]
        bt = self.cfg.block_time
        out: dict[str, Any] = {
            "latency_p50_le_3_blocks": {"from": "issue 15: no worse than before (p50 3 blocks)",
                                        "p50_blocks": lat["latency_blocks"]["p50"],
                                        "met": lat["latency_blocks"]["p50"] <= 3},
            "reaction_p99_le_20ms": {"from": "issue 15", "p99_ms": lat["reaction_ms"]["p99"],
                                     "met": lat["reaction_ms"]["p99"] <= 20},
            "burst_settled_within_10s": {"from": f"issue 15, for a burst of 1,000 (this run: {on['trades']})",
                                         "seconds": on["seconds"], "met": on["seconds"] <= 10},
            "gas_batched_le_0.31_unbatched": {"from": "issue 15: no worse than before",
                                              "ratio": round(on["gas_per_dvp"] / off["gas_per_dvp"], 3),
                                              "met": on["gas_per_dvp"] <= 0.31 * off["gas_per_dvp"]},
            "redis_le_1.6kb_per_trade": {"from": "issue 15", "bytes": on["redis_bytes_per_trade"],
                                         "met": on["redis_bytes_per_trade"] <= 1600},
            "raw_unbatched_ceiling_dvp_per_s": {"from": "measured: raw tx/s / 4 transactions per DvP",
                                                "value": round(raw_tps / 4, 1)},
        }
        if "open_loop" in self.out:
            best = self.out["open_loop"]["sustained"]
            rate = best["sustained_dvp_per_s"]
            out["sustained_ge_250_dvp_per_s"] = {"from": f"issue 15 (p99 <= 6 blocks = {6 * bt:g} s, no backlog growth)",
                                                 "sustained_dvp_per_s": rate, "met": bool(rate and rate >= 250)}
            cpu = best["cpu_ms_per_dvp_there"]
            out["cpu_le_2ms_per_dvp_sustained"] = {"from": "issue 15", "ms": cpu, "met": bool(cpu and cpu <= 2)}
        return out


async def soak(cfg: BenchConfig, total: int, echo: Any = print, wave: int = 200,
               trace_heap: int = 0) -> dict[str, Any]:
    """Settle `total` trades in waves through one worker; sample its RSS every 1,000 settled trades. With
    worker logs what grew from 1,000 to `total` settled trades (relayer.diagnostics: the heap_growth lines of
    worker-soak.log), by object type, and with `trace_heap` frames by allocation site (tracemalloc, slow)."""
    b = Bench(cfg, echo)
    await b.setup()
    proc, log, port = await b.start_worker("soak", 5, 50, extra_env={"PYTHONTRACEMALLOC": str(trace_heap)}
                                           if trace_heap else None)
    store = Store.from_url(f"redis://127.0.0.1:{b.redis.port}/5")
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        settled = 0
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            while settled < total:
                bodies = [await b._instruction(settled + i) for i in range(min(wave, total - settled))]
                ids = list(await asyncio.gather(*(_post_trade(http, x) for x in bodies)))
                await b._wait_settled(store, ids)
                settled += len(ids)
                if settled % 1000 == 0 or settled == total:
                    samples.append({"settled": settled, "rss_mb": round(_vm_kb(proc.pid, "VmRSS") / 1024, 1),
                                    "seconds": round(time.monotonic() - t0, 1)})
                    echo(f"  {samples[-1]}")
                    if settled in (1000, total):
                        proc.send_signal(signal.SIGUSR2)  # relayer.diagnostics: baseline, then growth (worker log)
    finally:
        b.stop_worker(proc, log)
        await store.close()
        await b.teardown()
    rss = [x["rss_mb"] for x in samples if x["settled"] >= 1000]
    spread = (max(rss) - min(rss)) / min(rss) if rss else float("nan")
    return {"soak": samples, "rss_spread_from_1k": round(spread, 3), "flat_within_10pct": spread <= 0.10}


async def scale_out(cfg: BenchConfig, workers: list[int], pairs: int, echo: Any = print) -> dict[str, Any]:
    """Throughput with 1, 2, 4 ... worker processes on one Redis, side by side on one devnet.

    `pairs` seller/buyer account pairs share the trades (accounts are split between live workers; one
    account has one signer), all trades are posted at once to the first worker's API and handed out through
    the intake stream and per-trade leases.
    """
    from eth_account import Account

    b = Bench(cfg, echo)
    await b.setup()
    parties = [Account.create() for _ in range(2 * pairs)]
    sellers, buyers = parties[:pairs], parties[pairs:]
    issuer = dev_account(ROLES["issuer"])
    for chain, side, kind in ((b.st, "st", "SecurityToken"), (b.sc, "sc", "Stablecoin")):
        token = next(iter(b.doc[side]["tokens"].values()))
        tx = TxSender(chain, issuer)
        for p in parties:
            await chain.rpc("anvil_setBalance", [p.address, hex(10**21)])
        await tx.transact(token, encode_call(kind, "setAllowed", [p.address for p in parties], True))
        for p in sellers if side == "st" else buyers:
            args = (p.address, 10**9) if side == "st" else (p.address, 10**15, b"\0" * 32)
            await tx.transact(token, encode_call(kind, "issue", *args))
    st, sc = b.doc["st"], b.doc["sc"]
    results: dict[str, Any] = {"pairs": pairs, "trades": cfg.trades, "runs": []}
    try:
        for db, n in enumerate(workers, start=6):
            env = b._env(db, 50, 0) | {"DVP_PARTY_KEYS": ",".join(p.key.hex() for p in parties)}
            procs = []
            for i in range(n):
                port = free_port()
                log = open(cfg.workdir / f"worker-scale{n}-{i}.log", "wb")
                exe = Path(sys.executable).with_name("dvp-relayer")
                procs.append((subprocess.Popen([str(exe), "run"], env=env | {"DVP_API_PORT": str(port)},
                                               stdout=log, stderr=log), log, port))
            for _, _, port in procs:
                while not port_open(port):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # every worker has joined and taken its share of the accounts
            store = Store.from_url(f"redis://127.0.0.1:{b.redis.port}/{db}")
            bodies = []
            deadline = await b.st.now() + 3600
            for i in range(cfg.trades):
                seller, buyer = sellers[i % pairs].address, buyers[i % pairs].address
                ins = TradeInstruction(
                    tradeId="0x" + os.urandom(32).hex(), stChainId=st["chain_id"],
                    stToken=next(iter(st["tokens"].values())), stAmount=1, scChainId=sc["chain_id"],
                    scToken=next(iter(sc["tokens"].values())), scAmount=1000 + i, sellerStAccount=seller,
                    sellerScAccount=seller, buyerScAccount=buyer, buyerStAccount=buyer, deadline=deadline)
                bodies.append(sign_instruction(ins, dev_account(ROLES["pts"]).key, DOMAIN_SALT).model_dump_json())
            cpu0 = [_proc_usage(p.pid)[0] for p, _, _ in procs]
            t0 = time.monotonic()
            async with aiohttp.ClientSession(f"http://127.0.0.1:{procs[0][2]}") as http:
                ids = list(await asyncio.gather(*(_post_trade(http, x) for x in bodies)))
            try:
                await b._wait_settled(store, ids)
                elapsed = time.monotonic() - t0
                drivers = set()
                for tid in ids:
                    drivers |= {e["actor"] for e in await store.audit(tid) if e["event"] == "state"}
                cpu = [round(_proc_usage(p.pid)[0] - c, 1) for (p, _, _), c in zip(procs, cpu0)]
                run = {"workers": n, "seconds": round(elapsed, 2), "dvp_per_s": round(len(ids) / elapsed, 2),
                       "worker_cpu_s": cpu, "workers_that_drove_trades": len(drivers)}
            finally:
                for p, log, _ in procs:
                    b.stop_worker(p, log)
                await store.close()
            results["runs"].append(run)
            echo(f"  {json.dumps(run)}")
    finally:
        await b.teardown()
    base = results["runs"][0]["dvp_per_s"]
    for run in results["runs"]:
        run["speedup_vs_first"] = round(run["dvp_per_s"] / base, 2)
    return results


def _proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user+sys) and peak RSS (kB) of a live process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    return cpu, _vm_kb(pid, "VmHWM")


def run_bench(cfg: BenchConfig, echo: Any = print) -> dict[str, Any]:
    return asyncio.run(Bench(cfg, echo).run())
