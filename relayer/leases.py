"""Who this worker is, for leases: a token that names the host, the PID namespace and the process.

A lease normally passes to another worker only when its TTL runs out. When the holder ran on this same host
and in this same PID namespace and its process is gone (SIGKILL, OOM, crash), waiting out the TTL only delays
the trades it was driving: `holder_is_dead()` lets a restarted worker take over at once. Anything it cannot
prove dead (another host, another namespace, a live or reused PID, a token it cannot parse) is left to the TTL.
"""

from __future__ import annotations

import os
import socket


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "?"


HOST = socket.gethostname()
PID_NS = _pid_namespace()
ACTOR = f"relayer@{HOST}:{os.getpid()}"  # who wrote an audit entry
WORKER_TOKEN = f"{ACTOR}:{PID_NS}:{os.urandom(4).hex()}"  # lease token: unique per process start


def holder_is_dead(token: str) -> bool:
    """True only when `token` is a lease token of a process on this host and PID namespace that has exited."""
    try:
        name, pid_text, ns, _nonce = token.rsplit(":", 3)
        host = name.split("@", 1)[1]
        pid = int(pid_text)
    except (ValueError, IndexError):
        return False
    if host != HOST or ns != PID_NS or ns == "?" or token == WORKER_TOKEN or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False
