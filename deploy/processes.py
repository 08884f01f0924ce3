"""Start and stop the real local components (anvil, redis-server) as child processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.toolchain import anvil_binary

# anvil's well-known development mnemonic: local devnets and tests only, never real funds.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


class ProcessStartError(RuntimeError):
    """Raised when a child process did not come up (port busy, crashed, wrong program on the port)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def rpc_request(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    if "error" in doc:
        raise ProcessStartError(f"{method}: {doc['error']}")
    return doc["result"]


@dataclass
class AnvilProcess:
    """One anvil chain. `block_time=None` means automine (a block per transaction)."""

    chain_id: int
    port: int
    block_time: float | None = None
    state_file: Path | None = None
    log_file: Path | None = None
    extra_args: tuple[str, ...] = ()  # e.g. ("--hardfork", "berlin", "--gas-price", "0"): a permissioned chain's profile
    proc: subprocess.Popen | None = None
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(anvil_binary()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--mnemonic", DEV_MNEMONIC,
            "--accounts", "10",
            "--silent",
        ]
        if self.block_time is not None:
            cmd += ["--block-time", str(self.block_time)]
        if self.state_file is not None:
            cmd += ["--state", str(self.state_file), "--state-interval", "1"]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 20.0) -> AnvilProcess:
        if port_open(self.port):
            raise ProcessStartError(f"port {self.port} is already in use; refusing to share someone else's chain")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessStartError(f"anvil exited with {self.proc.returncode} (port {self.port})")
            try:
                version = str(rpc_request(self.url, "web3_clientVersion"))
                if "anvil" not in version.lower():
                    raise ProcessStartError(f"port {self.port} answers as {version!r}, not anvil")
                return self
            except (OSError, ValueError):
                time.sleep(0.05)
        self.stop()
        raise ProcessStartError(f"anvil on port {self.port} did not answer within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    break
            elif not _alive(pid):
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=timeout)
        self.pid = None

    def pause(self) -> None:
        """SIGSTOP: RPC calls hang with no answer (a stalled node)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ProcessStartError("redis-server not installed (Debian: apt-get install redis-server)")
    return found


@dataclass
class RedisProcess:
    """A throw-away (or devnet) redis-server with AOF, bound to 127.0.0.1."""

    port: int
    data_dir: Path
    appendfsync: str = "always"
    proc: subprocess.Popen | None = None
    pid: int | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): TLS only, on `port` (no plain port)
    extra_args: tuple[str, ...] = ()  # e.g. ACL users: ("--user", "dvp", "on", ">password", "~dvp:*", ...)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        if port_open(self.port):
            raise ProcessStartError(f"port {self.port} is already in use")
        self.data_dir = self.data_dir.resolve()  # redis chdirs to --dir before opening --logfile
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                     str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        cmd = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            *ports,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessStartError(f"redis-server exited with {self.proc.returncode}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        raise ProcessStartError(f"redis-server on port {self.port} did not start")

    def stop(self, kill: bool = False) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait(timeout=10)
        else:
            deadline = time.monotonic() + 10
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid = None


@dataclass
class SentinelGroup:
    """A Redis master, one replica and one Sentinel on 127.0.0.1: the production layout, small enough for tests
    and the chaos run. The master refuses writes without a replica (min-replicas-to-write 1), so together with
    DVP_REDIS_MIN_REPLICAS=1 a trade answered 202 is on two nodes before a failover can happen."""

    data_dir: Path
    master_name: str = "dvp"
    down_after_ms: int = 1000

    def __post_init__(self) -> None:
        self.nodes = [RedisProcess(free_port(), self.data_dir / name) for name in ("a", "b")]
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen | None = None

    @staticmethod
    def _guard() -> tuple[str, ...]:
        return ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        first, second = self.nodes
        first.extra_args = self._guard()
        second.extra_args = (*self._guard(), "--replicaof", "127.0.0.1", str(first.port))
        first.start()
        second.start()
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(f"bind 127.0.0.1\nport {self.sentinel_port}\ndir {self.data_dir.resolve()}\n"
                        f"sentinel monitor {self.master_name} 127.0.0.1 {first.port} 1\n"
                        f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.master_name} 5000\n"
                        f"logfile {(self.data_dir / 'sentinel.log').resolve()}\n")
        self.sentinel = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        # the Sentinel learns the replica from the master's INFO (every 10 s); until then no failover can happen
        while not (port_open(self.sentinel_port) and self._ask("SENTINEL", "REPLICAS", self.master_name)):
            if time.monotonic() > deadline:
                raise ProcessStartError("the Sentinel never saw the replica")
            time.sleep(0.2)
        self.wait_master_writable(deadline - time.monotonic())
        return self

    def wait_master_writable(self, timeout: float) -> RedisProcess:
        """Until the node the Sentinel names master, asked again each time, counts a good replica; that node. A
        master that stalls for longer than down-after-milliseconds right after a promotion (a full resync of the
        old master, a loaded machine) is failed over again: the master to wait for is the one named now."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            node = self.master()
            try:
                with redis.Redis(port=node.port, socket_timeout=2) as r:
                    info = r.info("replication")
                    if info.get("role") == "master" and int(info.get("min_slaves_good_slaves", 0)) >= 1:
                        return node
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ProcessStartError(f"no master with a good replica after {timeout:.0f} s (named: {node.port})")
            time.sleep(0.2)

    def _ask(self, *cmd: str) -> object:
        import redis

        try:
            with redis.Redis(port=self.sentinel_port, socket_timeout=2) as r:
                return r.execute_command(*cmd)
        except redis.RedisError:
            return None

    @property
    def sentinels(self) -> str:
        """DVP_REDIS_SENTINELS for a worker."""
        return f"127.0.0.1:{self.sentinel_port}"

    def master(self) -> RedisProcess:
        """The node the Sentinel names master now."""
        deadline = time.monotonic() + 10
        while not isinstance(addr := self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name), list):
            if time.monotonic() > deadline:  # never guess: a wrong guess kills the master instead of the replica
                raise ProcessStartError("the Sentinel does not name a master")
            time.sleep(0.2)
        return next(n for n in self.nodes if n.port == int(addr[1]))

    def fail_over(self, timeout: float = 30.0) -> float:
        """SIGKILL the master, wait until the Sentinel promotes the replica, bring the old master back as the new
        master's replica. Returns the seconds without a master that takes writes."""
        old = self.master()
        new = next(n for n in self.nodes if n is not old)
        started = time.monotonic()
        old.stop(kill=True)
        try:
            while self.master() is not new:
                if time.monotonic() - started > timeout:
                    raise ProcessStartError("the Sentinel did not promote the replica")
                time.sleep(0.1)
            new.extra_args = self._guard()  # a master now: restarted, it must not follow its old master again
        finally:  # back as a replica of whichever node the Sentinel names, even when the promotion failed
            old.extra_args = (*self._guard(), "--replicaof", "127.0.0.1", str(self.master().port))
            if self.master() is old:
                old.extra_args = self._guard()
            old.start()
        return time.monotonic() - started

    def stop(self) -> None:
        try:
            if self.sentinel is not None and self.sentinel.poll() is None:
                self.sentinel.terminate()
                try:
                    self.sentinel.wait(10)
                except subprocess.TimeoutExpired:
                    self.sentinel.kill()
        finally:
            for node in self.nodes:
                node.stop()
