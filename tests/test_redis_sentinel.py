"""The store through Redis Sentinel (real redis-server and redis-sentinel processes), across a failover."""

from __future__ import annotations

import asyncio
import subprocess
import time

from deploy.processes import RedisProcess, free_port, port_open, redis_server_binary
from relayer.config import Settings
from relayer.protocol.instruction import TradeInstruction, sign_instruction
from relayer.protocol.states import TradeState
from relayer.service import store_for
from tests.chain_kit import dev_accounts


def _instruction(n: int):
    a = dev_accounts(4)
    ins = TradeInstruction(tradeId="0x" + f"{n:064x}", stChainId=1, stToken=a[0].address, stAmount=1, scChainId=2,
                           scToken=a[1].address, scAmount=2, sellerStAccount=a[2].address,
                           sellerScAccount=a[2].address, buyerScAccount=a[3].address, buyerStAccount=a[3].address,
                           deadline=2_000_000_000)
    return sign_instruction(ins, a[0].key, bytes(32))


async def test_store_follows_a_sentinel_failover(tmp_path):
    master = RedisProcess(free_port(), tmp_path / "master").start()
    replica_port = free_port()
    replica = subprocess.Popen([redis_server_binary(), "--bind", "127.0.0.1", "--port", str(replica_port),
                                "--replicaof", "127.0.0.1", str(master.port), "--appendonly", "yes",
                                "--dir", str(tmp_path), "--save", ""], stdout=subprocess.DEVNULL)
    s_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"bind 127.0.0.1\nport {s_port}\ndir {tmp_path}\n"
                    f"sentinel monitor dvp 127.0.0.1 {master.port} 1\n"
                    "sentinel down-after-milliseconds dvp 1000\nsentinel failover-timeout dvp 5000\n"
                    f"logfile {tmp_path}/sentinel.log\n")
    sentinel = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    store = None
    try:
        for port in (replica_port, s_port):
            limit = time.monotonic() + 10
            while not port_open(port):
                assert time.monotonic() < limit
                await asyncio.sleep(0.05)
        import redis.asyncio as aioredis

        probe = aioredis.Redis(port=s_port)
        limit = time.monotonic() + 25  # the sentinel learns replicas from the master's INFO (every 10 s)
        while not await probe.sentinel_slaves("dvp"):
            assert time.monotonic() < limit, "the sentinel never saw the replica"
            await asyncio.sleep(0.25)
        await probe.aclose()
        settings = Settings(_env_file=None, redis_sentinels=f"127.0.0.1:{s_port}", redis_sentinel_master="dvp")
        store = store_for(settings)
        assert await store.create(_instruction(1), TradeState.MATCHED, "test")
        assert await store.r.wait(1, 5000) >= 1  # replicated before the master dies
        master.stop(kill=True)
        deadline = time.monotonic() + 30
        while True:  # the client keeps asking the sentinel for the master until the replica is promoted
            try:
                assert await store.create(_instruction(2), TradeState.MATCHED, "test")
                break
            except Exception:  # noqa: BLE001 - connection errors and READONLY until promoted
                assert time.monotonic() < deadline, "no failover within 30 s"
                await asyncio.sleep(0.5)
        assert (await store.get("0x" + f"{1:064x}")) is not None  # written before the failover
        assert sorted(await store.open_trades()) == ["0x" + f"{n:064x}" for n in (1, 2)]
    finally:
        if store is not None:
            await store.close()
        for p in (sentinel, replica):
            p.terminate()
            p.wait(10)
        master.stop()
