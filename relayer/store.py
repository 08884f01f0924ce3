"""Every Redis key and script of the relayer, in one place.

Keys (prefix `dvp:`):
  dvp:trade:{id}      hash: instruction JSON, digest, state, version, created_at, and the intent fields
                      (hashlock, sealed secret, planned T_st, planned T_sc, start blocks, leg tx hashes)
  dvp:audit:{id}      list of JSON entries: who, what, tx hash, block, time (append-only)
  dvp:open            sorted set of non-terminal trade ids (score = acceptance time)
  dvp:all             sorted set of every trade id (score = acceptance time)
  dvp:counts          hash: terminal state -> number of trades that reached it
  dvp:lease:{name}    string: the token of the worker holding the lease (SET NX PX; renewed with a Lua
                      compare-token script). Account leases make one worker the only signer of an account.
  dvp:cursor:{chain}  hash: height, hash and chain id of the last block the follower processed
  dvp:intake          stream: one entry per accepted trade id; consumer group `dvp:workers` hands each entry
                      to one worker, which takes the trade's lease and acks (XAUTOCLAIM recovers a dead
                      reader's entries)
  dvp:lease:trade:{id} string "token#fence": the worker driving the trade; `fence` grows by one at every
                      handover (kept in the trade hash) and state writes check it (fencing)
  dvp:workers         sorted set: worker token -> last heartbeat (live workers share the work)
  dvp:outbox:{account} list of trade ids whose next action needs `account`'s signature, held by another worker
  dvp:strays:{chain}  sorted set: locks under one of our trade ids that the protocol does not follow (a counterparty's
                      re-lock, a lock by someone else, a lock made after the trade finished), as JSON of every term;
                      score = timelock. The watcher refunds each once its timelock passes and drops it once its
                      slot no longer holds it: every lock the relayer has seen ends claimed or refunded.
  dvp:locknonce:{chain id}:{holder}:{nonce}  string: the trade whose kept lock authorisation (lockWithSig) uses
                      this escrow nonce of a holder-signed account, so two trades never hold the same one (SET NX,
                      expires after a week: by then the nonce is used on chain or the trade is over)
State changes are compare-and-set on `version` (Lua), and the audit entry is written in the same script.
Delivery: at-least-once; every action the engine takes is idempotent and checked against the chain.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from relayer.errors import (ConcurrentUpdate, ConflictingInstruction, CorruptRecord, FencedOut, LeaseLapsed,
                            NotReplicated)
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.states import TERMINAL, TradeState
from relayer.together import Together

PREFIX = "dvp:"
OPEN = PREFIX + "open"
ALL = PREFIX + "all"
COUNTS = PREFIX + "counts"
INTAKE = PREFIX + "intake"
# a counter intake bumps before WAIT: a retried create writes nothing (the trade is known), and WAIT only waits for
# what its connection wrote, so without a write of its own it could return before the replica has the trade
REPLICATION_FENCE = PREFIX + "replication_fence"
WEBHOOK_OUTBOX = PREFIX + "webhook:outbox"  # relayer/webhooks.py delivers it
INTAKE_GROUP = "relayers"  # the consumer group of the intake stream (a group name, not a key)
WORKERS = PREFIX + "workers"
# the rare final states an operator looks for among all trades (GET /v1/trades?state=...): a sorted set each, by
# when the trade got there; the open states are found through OPEN, SETTLED and ABORTED (the bulk) by a scan
INDEXED_STATES = (TradeState.ONE_SIDED, TradeState.REJECTED)
STATE_INDEX_BUILT = PREFIX + "state_index_built"  # set once every older trade of those states is indexed


def state_key(state: TradeState) -> str:
    return f"{PREFIX}state:{state.value}"


def trade_key(trade_id: str) -> str:
    return f"{PREFIX}trade:{trade_id}"


def audit_key(trade_id: str) -> str:
    return f"{PREFIX}audit:{trade_id}"


def outbox_key(account: str) -> str:
    return f"{PREFIX}outbox:{account}"


def cursor_key(chain: str) -> str:
    return f"{PREFIX}cursor:{chain}"


def strays_key(chain: str) -> str:
    return f"{PREFIX}strays:{chain}"


def lock_nonce_key(chain_id: int, holder: str, nonce: int) -> str:
    return f"{PREFIX}locknonce:{chain_id}:{holder}:{nonce}"


LOCK_NONCE_TTL = 7 * 24 * 3600


# KEYS: trade, audit, open, all, counts, REJECTED index. ARGV: digest, record JSON, audit JSON, now
_CREATE = """
local existing = redis.call('HGET', KEYS[1], 'digest')
if existing then
  if existing == ARGV[1] then return 0 end
  return -1
end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('RPUSH', KEYS[2], ARGV[3])
if fields['state'] ~= 'REJECTED' then redis.call('ZADD', KEYS[3], ARGV[4], fields['trade_id'])
else
  redis.call('HINCRBY', KEYS[5], 'REJECTED', 1)
  redis.call('ZADD', KEYS[6], ARGV[4], fields['trade_id'])
end
redis.call('ZADD', KEYS[4], ARGV[4], fields['trade_id'])
return 1
"""

# KEYS: trade, audit, open, counts, trade lease, webhook outbox, ONE_SIDED index. ARGV: expected version, fields
# JSON, audit JSON (or ''), terminal flag, trade id, lease value the writer holds (or '' = unfenced: intake, single-worker tools),
# webhooks on ('1': a state change is added to the outbox in the same script), now. Returns the new version, or -1
# (version changed), -2 (another holds the lease), -3 (the lease lapsed, nobody holds it)
_UPDATE = """
local v = redis.call('HGET', KEYS[1], 'version')
if v ~= ARGV[1] then return -1 end
if ARGV[6] ~= '' then
  local held = redis.call('GET', KEYS[5])
  if held ~= ARGV[6] then
    if held then return -2 end
    return -3
  end
end
local fields = cjson.decode(ARGV[2])
if ARGV[7] == '1' and fields['state'] then
  local previous = redis.call('HGET', KEYS[1], 'state')
  if fields['state'] ~= previous then
    redis.call('XADD', KEYS[6], '*', 'type', 'state_changed', 'trade_id', ARGV[5],
               'state', fields['state'], 'previous', previous or '', 'at', ARGV[8])
  end
end
for k, val in pairs(fields) do redis.call('HSET', KEYS[1], k, val) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[3]) end
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('HINCRBY', KEYS[4], fields['state'], 1)
  if fields['state'] == 'ONE_SIDED' then redis.call('ZADD', KEYS[7], ARGV[8], ARGV[5]) end
end
return tonumber(v) + 1
"""


# KEYS: trade, audit. ARGV: expected version, packed archive, audit length. Replaces the hash by
# {state, version, digest, archive} and deletes the audit list, only if nothing changed meanwhile.
_ARCHIVE = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return -1 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[3]) then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
local digest = redis.call('HGET', KEYS[1], 'digest')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'state', state, 'version', ARGV[1], 'digest', digest, 'archive', ARGV[2])
return 1
"""


# KEYS: lease. ARGV: token, ttl ms, token of a holder known to be dead (or ""). Take a free lease, renew our
# own, or take over from the dead holder; returns our token when held by us afterwards, else the holder's.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or (ARGV[3] ~= '' and holder == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
"""

# KEYS: trade lease, trade. ARGV: token, ttl ms, value of a holder known to be dead (or "").
# Take a free lease (or a dead holder's) with the next fencing number, or renew ours; returns the value held.
_TRADE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or (ARGV[3] ~= '' and holder == ARGV[3]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then return '' end
  local fence = redis.call('HINCRBY', KEYS[2], 'fence', 1)
  local value = ARGV[1] .. '#' .. fence
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return value
end
if string.sub(holder, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '#' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
"""

# KEYS: lease. ARGV: token. Release only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(name: str) -> str:
    return f"{PREFIX}lease:{name}"


POOL_SIZE, POOL_WAIT = 64, 10.0  # Redis connections per worker; seconds a command waits for a free one
PARSED_MAX = 20_000  # parsed instructions kept (immutable: each is validated once while its trade is open)
AUDITS_KEPT_MAX = 50_000  # audit entries kept in memory while Redis refuses writes (the oldest go first beyond)
# the error codes of a Redis that answers reads but refuses every client's writes (a command's own reply, or the
# one a pipeline quotes): min-replicas-to-write not met, maxmemory reached, a failed RDB save
# (Redis 6 wraps a script's refused write as "ERR Error running script ...: @user_script: 5: -NOREPLICAS ...")
_REFUSED = re.compile(r"(?:^|caused error: |@user_script: ?\d+: -)(?:NOREPLICAS|OOM|MISCONF) ")


def refuses_writes(exc: BaseException) -> bool:
    """True when `exc` says Redis refuses writes to every client while it still answers reads (NOREPLICAS: a
    Sentinel group's replica is restarting under min-replicas-to-write; OOM; MISCONF). Then no worker can take a
    lease either, so claims and refunds, which need nothing written, may still go out (coordination.py). READONLY
    is not one: that connection reached a replica, and another client may be writing to the master."""
    return isinstance(exc, OutOfMemoryError) or (isinstance(exc, ResponseError) and bool(_REFUSED.search(str(exc))))


@dataclass
class TradeRecord:
    """A trade as stored: the signed instruction plus intent and progress."""

    trade_id: str
    signed: SignedInstruction
    state: TradeState
    version: int
    fields: dict[str, str]

    def get(self, name: str) -> str | None:
        return self.fields.get(name) or None

    def get_int(self, name: str) -> int | None:
        v = self.fields.get(name)
        return int(v) if v not in (None, "") else None


UPDATES_AT_ONCE = 256  # trade state writes in one pipeline at most


class Store:
    """Trade records, audit trail, open-trade index and chain cursors in Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        # Any: redis-py's stubs type every reply as bytes | str, but this client decodes (decode_responses=True),
        # so replies are str; typing them as such here would need a cast at each of the ~40 calls
        self.r: Any = client
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._archive = client.register_script(_ARCHIVE)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)
        self._trade_lease = client.register_script(_TRADE_LEASE)
        # the compare-and-set writes of trades decided at the same moment go in one pipeline (one round trip)
        self._updates = Together(self._update_many, most=UPDATES_AT_ONCE)
        self._archives = Together(self._archive_many, most=UPDATES_AT_ONCE)
        self._parsed: dict[str, SignedInstruction] = {}
        # intake durability across a failover (store_for sets them from DVP_REDIS_MIN_REPLICAS): an accepted
        # trade is answered only once this many replicas have it
        self.min_replicas, self.replica_wait_ms = 0, 1000
        self.webhooks = False  # state changes also go to the webhook outbox (DVP_WEBHOOK_URL; relayer/webhooks.py)
        # audit entries of actions taken while Redis refused writes: written before the next ones that go through
        self._audits_kept: deque[tuple[str, str]] = deque(maxlen=AUDITS_KEPT_MAX)

    @classmethod
    def from_sentinels(cls, sentinels: list[tuple[str, int]], master: str, db: int = 0) -> Store:
        """Through Redis Sentinel: the client asks the Sentinels for the current master and follows failovers."""
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(sentinels, socket_timeout=2.0)
        return cls(sentinel.master_for(master, db=db, decode_responses=True, encoding="latin-1",
                                       socket_timeout=5.0, health_check_interval=10))

    @classmethod
    def from_url(cls, url: str) -> Store:
        # latin-1 maps every byte to one character and back, so the compressed archives can be stored raw
        # (no base64); everything else the relayer writes is ASCII JSON, identical under either encoding.
        # a blocking pool: more concurrent commands than connections wait for one (redis-py's default pool
        # raises "Too many connections" past 100, which failed a 333-swap batch's preparation in the bench)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT,
                                                        decode_responses=True, encoding="latin-1",
                                                        health_check_interval=10)
        return cls(aioredis.Redis(connection_pool=pool))

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def create(self, signed: SignedInstruction, state: TradeState, actor: str, note: str = "") -> bool:
        """Store a new trade. True if created, False if the same instruction was already there.

        Raises ConflictingInstruction when the id exists with different terms.
        """
        ins = signed.instruction
        keys, args = _create_call(signed, state, actor, time.time(), note)
        async with self.r.pipeline(transaction=False) as pipe:  # one connection: WAIT covers this write
            await self._create(keys=keys, args=args, client=pipe)
            self._wait_replicas(pipe)
            res, *replies = await pipe.execute()
        self._check_replicated(replies)
        if int(res) == -1:
            raise ConflictingInstruction(f"trade {ins.tradeId} already exists with different terms")
        return int(res) == 1

    async def create_many(self, signed: list[SignedInstruction], actor: str) -> list[bool | ConflictingInstruction]:
        """Store new trades (MATCHED) in one round trip and queue the new ones for the workers in a second:
        per instruction, True if created, False if already there, ConflictingInstruction if its id has other
        terms."""
        if not signed:
            return []
        now = time.time()
        async with self.r.pipeline(transaction=False) as pipe:
            for s in signed:
                keys, args = _create_call(s, TradeState.MATCHED, actor, now)
                await self._create(keys=keys, args=args, client=pipe)
            self._wait_replicas(pipe)
            replies = await pipe.execute()
        codes = [int(c) for c in replies[:len(signed)]]
        self._check_replicated(replies[len(signed):])
        created = [s.instruction.tradeId for s, c in zip(signed, codes) if c == 1]
        if created:
            async with self.r.pipeline(transaction=False) as pipe:
                for tid in created:
                    pipe.xadd(INTAKE, {"trade_id": tid}, maxlen=100_000, approximate=True)
                await pipe.execute()
        return [ConflictingInstruction(f"trade {s.instruction.tradeId} already exists with different terms")
                if c == -1 else c == 1 for s, c in zip(signed, codes)]

    def _wait_replicas(self, pipe: Any) -> None:
        """WAIT on the pipeline's own connection (WAIT covers the writes of the connection it is sent on)."""
        if self.min_replicas:
            pipe.incr(REPLICATION_FENCE)
            pipe.execute_command("WAIT", self.min_replicas, self.replica_wait_ms)

    def _check_replicated(self, replies: list[Any]) -> None:
        """`replies`: the fence's and WAIT's."""
        if self.min_replicas and int(replies[-1]) < self.min_replicas:
            raise NotReplicated(f"{replies[-1]} of {self.min_replicas} Redis replicas acknowledged the trade within "
                                f"{self.replica_wait_ms} ms; retry (the same instruction again is idempotent)")

    async def existing(self, trade_ids: list[str]) -> set[str]:
        """Which of these trade ids are taken, in one round trip."""
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in trade_ids:
                pipe.exists(trade_key(tid))
            found = await pipe.execute()
        return {tid for tid, n in zip(trade_ids, found) if n}

    async def get(self, trade_id: str) -> TradeRecord | None:
        return self._record(trade_id, await self.r.hgetall(trade_key(trade_id)))

    def forget_parsed(self, rec: TradeRecord) -> None:
        """Drop a finished trade's parsed instruction (the worker's memory stays flat over a day of trades)."""
        self._parsed.pop(rec.fields.get("digest", ""), None)

    async def get_many(self, trade_ids: list[str], broken: dict[str, CorruptRecord] | None = None
                       ) -> list[TradeRecord]:
        """Several records in one round trip. A record that cannot be read raises CorruptRecord, or, when
        `broken` is given, is left out and put there (one bad record must not hide the others)."""
        if not trade_ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in trade_ids:
                pipe.hgetall(trade_key(tid))
            rows = await pipe.execute()
        out = []
        for tid, data in zip(trade_ids, rows):
            try:
                rec = self._record(tid, data)
            except CorruptRecord as exc:
                if broken is None:
                    raise
                broken[tid] = exc
                continue
            if rec is not None:
                out.append(rec)
        return out

    def _record(self, trade_id: str, data: dict[str, str]) -> TradeRecord | None:
        """The record from its hash; CorruptRecord when a field is missing or malformed."""
        if not data:
            return None
        try:
            if "archive" in data:
                data = {**data, **_unpack(data["archive"])["fields"]}
            signed = self._parsed.get(data["digest"])
            if signed is None:  # instructions are immutable: validate (checksums, signature shape) once
                signed = SignedInstruction.model_validate_json(data["instruction"])
                if len(self._parsed) > PARSED_MAX:  # a bound for readers that never forget (the API's lists)
                    self._parsed.clear()
                self._parsed[data["digest"]] = signed
            return TradeRecord(trade_id=trade_id, signed=signed, state=TradeState(data["state"]),
                               version=int(data["version"]), fields=data)
        except KeyError as exc:
            raise CorruptRecord(trade_id, f"field {exc.args[0]!r} missing") from None
        except (ValueError, TypeError, zlib.error) as exc:  # pydantic's ValidationError is a ValueError
            raise CorruptRecord(trade_id, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

    async def update(
        self,
        rec: TradeRecord,
        fields: dict[str, Any],
        *,
        actor: str,
        event: str | None,
        fence: str = "",
        **audit: Any,
    ) -> TradeRecord:
        """Compare-and-set: write `fields` (and an audit entry) only if nobody changed the record since `rec`
        and, when `fence` is given, only while the trade's lease still holds that exact value."""
        str_fields = {k: str(v) for k, v in fields.items()}
        new_state = TradeState(str_fields.get("state", rec.state.value))
        entry = _audit_entry(actor, event, **audit) if event else ""
        res = await self._updates.submit((
            [trade_key(rec.trade_id), audit_key(rec.trade_id), OPEN, COUNTS, lease_key(f"trade:{rec.trade_id}"),
             WEBHOOK_OUTBOX, state_key(TradeState.ONE_SIDED)],
            [str(rec.version), json.dumps(str_fields), entry, "1" if new_state in TERMINAL else "0",
             rec.trade_id, fence, "1" if self.webhooks else "0", f"{time.time():.3f}"],
        ))
        if int(res) == -1:
            raise ConcurrentUpdate(f"trade {rec.trade_id} changed concurrently (had version {rec.version})")
        if int(res) == -2:
            raise FencedOut(f"trade {rec.trade_id}: this worker no longer holds its lease ({fence}); not writing")
        if int(res) == -3:
            raise LeaseLapsed(f"trade {rec.trade_id}: its lease ({fence}) lapsed and nobody holds it; not writing")
        rec.fields.update(str_fields)
        rec.version, rec.state = int(res), new_state
        return rec

    async def _update_many(self, writes: list[tuple[list[str], list[str]]]) -> list[Any]:
        """Each write's script reply, or its own error (another write's failure is not this one's)."""
        if len(writes) == 1:  # alone: the script directly (a pipeline first asks SCRIPT EXISTS)
            keys, args = writes[0]
            return [await self._update(keys=keys, args=args)]
        async with self.r.pipeline(transaction=False) as pipe:
            for keys, args in writes:
                await self._update(keys=keys, args=args, client=pipe)
            return list(await pipe.execute(raise_on_error=False))

    async def audit(self, trade_id: str) -> list[dict[str, Any]]:
        async with self.r.pipeline(transaction=True) as pipe:  # one snapshot: an archival may run in between
            pipe.hget(trade_key(trade_id), "archive")
            pipe.lrange(audit_key(trade_id), 0, -1)
            archived, entries = await pipe.execute()
        later = [json.loads(x) for x in entries]
        if archived:
            return list(_unpack(archived)["audit"]) + later  # e.g. a late lock refunded after archival
        return later

    async def audits(self, trade_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The audit trails of several trades in one round trip (archived ones unpacked), by trade id."""
        if not trade_ids:
            return {}
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in trade_ids:
                pipe.hget(trade_key(tid), "archive")
                pipe.lrange(audit_key(tid), 0, -1)
            replies = await pipe.execute()
        out: dict[str, list[dict[str, Any]]] = {}
        for i, tid in enumerate(trade_ids):
            archived, entries = replies[2 * i], replies[2 * i + 1]
            later = [json.loads(x) for x in entries]
            out[tid] = (list(_unpack(archived)["audit"]) + later) if archived else later
        return out

    async def state_counts(self, most_open: int = 20_000) -> dict[str, int]:
        """Trades by state, from the store (not from a page): finished ones from their counters, open ones read
        (in one round trip, up to `most_open` of them; beyond that they are counted as "open" only)."""
        counts = await self.terminal_counts()
        open_ids = list(await self.r.zrange(OPEN, 0, most_open - 1))
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in open_ids:
                pipe.hget(trade_key(tid), "state")
            states = await pipe.execute() if open_ids else []
        for state in states:
            if state:
                counts[state] = counts.get(state, 0) + 1
        counts["open"] = await self.count_open()
        return counts

    async def archive(self, trade_id: str) -> bool:
        """Compact a finished trade: its fields and audit trail become one compressed value, the sealed secret
        is dropped (a settled trade's secret is public on chain; an aborted one's is never needed again).
        Readers (get, audit) see the same data as before. False if the trade is not terminal or changed.
        Trades archived at the same moment share two round trips (their reads, their compare-and-set writes)."""
        return bool(await self._archives.submit(trade_id))

    async def _archive_many(self, trade_ids: list[str]) -> list[Any]:
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in trade_ids:
                pipe.hgetall(trade_key(tid))
                pipe.lrange(audit_key(tid), 0, -1)
            replies = await pipe.execute()
        writes: list[tuple[int, list[str], list[str]]] = []
        done: list[Any] = [False] * len(trade_ids)
        for i, tid in enumerate(trade_ids):
            data, audit = replies[2 * i], replies[2 * i + 1]
            try:
                if not data or "archive" in data or TradeState(data["state"]) not in TERMINAL:
                    continue
                # kept: what the API shows; dropped: the sealed secret and what is derivable or operational only
                drop = ("secret", "state", "version", "digest", "trade_id", "st_from_block", "sc_from_block")
                keep = {k: v for k, v in data.items() if k not in drop}
                packed = _pack({"fields": keep, "audit": [json.loads(x) for x in audit]})
            except (KeyError, ValueError) as exc:  # a corrupt record: its own caller hears it, the others go on
                done[i] = exc
                continue
            writes.append((i, [trade_key(tid), audit_key(tid)], [data["version"], packed, str(len(audit))]))
        if writes:
            async with self.r.pipeline(transaction=False) as pipe:
                for _, keys, args in writes:
                    await self._archive(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
            for (i, _, _), res in zip(writes, results):
                done[i] = res if isinstance(res, Exception) else int(res) == 1  # one refused write fails alone
        return done

    async def add_audit(self, trade_id: str, actor: str, event: str, **data: Any) -> None:
        """An audit entry that changes no state (e.g. a counterparty lock with wrong terms was seen)."""
        await self.r.rpush(audit_key(trade_id), _audit_entry(actor, event, **data))

    async def add_audits(self, entries: list[tuple[str, str, str, dict[str, Any]]], keep_if_refused: bool = False
                         ) -> None:
        """Many audit entries (trade id, actor, event, data) in one round trip: one per batch transaction.

        `keep_if_refused`: the entries of an action that must not wait for Redis (a claim sent while it refuses
        writes) are kept in memory then, and written, in their order, with the next entries Redis takes (a
        worker stopped before that loses them: the chain keeps what the action did)."""
        rows = [(audit_key(tid), _audit_entry(actor, event, **data)) for tid, actor, event, data in entries]
        kept = list(self._audits_kept)  # taken out: a concurrent call must not write them a second time
        self._audits_kept.clear()
        if not rows and not kept:
            return
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for key, entry in kept + rows:
                    pipe.rpush(key, entry)
                await pipe.execute()
        except RedisError as exc:
            self._audits_kept.extendleft(reversed(kept))  # back in front, in their order (at least once)
            if not (keep_if_refused and refuses_writes(exc)):
                raise
            self._audits_kept.extend(rows)

    async def note(self, trade_id: str, actor: str, event: str, **data: Any) -> None:
        """An audit entry that must never hold back the action or decision it describes: kept in memory while
        Redis refuses writes, written with the next entries it takes (add_audits)."""
        await self.add_audits([(trade_id, actor, event, data)], keep_if_refused=True)

    @property
    def audits_kept(self) -> int:
        """Audit entries waiting in memory for Redis to take writes again."""
        return len(self._audits_kept)

    async def open_trades(self, settled_for: float = 0.0) -> list[str]:
        """Ids of the non-terminal trades; with `settled_for`, only those accepted at least that long ago."""
        if settled_for:
            return list(await self.r.zrangebyscore(OPEN, "-inf", time.time() - settled_for))
        return list(await self.r.zrange(OPEN, 0, -1))

    async def list_trades(self, offset: int = 0, limit: int = 100) -> list[str]:
        return list(await self.r.zrevrange(ALL, offset, offset + limit - 1))

    async def list_open(self, offset: int = 0, limit: int = 100) -> list[str]:
        """Open trades, newest first."""
        return list(await self.r.zrevrange(OPEN, offset, offset + limit - 1))

    async def list_in_state(self, state: TradeState, offset: int = 0, limit: int = 100) -> list[str]:
        """Trades of an indexed final state (INDEXED_STATES), the latest to get there first."""
        return list(await self.r.zrevrange(state_key(state), offset, offset + limit - 1))

    async def index_states(self, chunk: int = 1000) -> int:
        """Index the trades of INDEXED_STATES that were written before the index existed (once per Redis; several
        workers doing it at once only repeat the same ZADDs). How many it indexed."""
        if await self.r.exists(STATE_INDEX_BUILT):
            return 0
        indexed, start = 0, 0
        while ids := await self.r.zrange(ALL, start, start + chunk - 1, withscores=True):
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for tid, _ in ids:
                    pipe.hget(trade_key(tid), "state")
                states = await pipe.execute()
            found = [(tid, score, state) for (tid, score), state in zip(ids, states) if state in INDEXED_STATES]
            if found:
                async with self.r.pipeline(transaction=False) as pipe:
                    for tid, score, state in found:
                        pipe.zadd(state_key(TradeState(state)), {tid: score})
                    await pipe.execute()
                indexed += len(found)
        await self.r.set(STATE_INDEX_BUILT, "1")
        return indexed

    async def hold_leases(self, names: list[str], token: str, ttl_ms: int,
                          dead: dict[str, str] | None = None) -> dict[str, str]:
        """Take or renew each lease for `token` in one round trip; name -> its holder now (ours when held).
        `dead` maps a lease to a holder token known to be dead: that holder's lease is taken over at once."""
        dead = dead or {}
        async with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                await self._lease(keys=[lease_key(name)], args=[token, ttl_ms, dead.get(name, "")], client=pipe)
            results = await pipe.execute()
        return dict(zip(names, results))

    async def hold_trade_leases(self, trade_ids: list[str], token: str, ttl_ms: int,
                                dead: dict[str, str] | None = None) -> dict[str, str]:
        """Take or renew trade leases in one round trip; trade id -> lease value now ("token#fence"; ours when
        it starts with our token; "" when the trade no longer exists)."""
        dead = dead or {}
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in trade_ids:
                await self._trade_lease(keys=[lease_key(f"trade:{tid}"), trade_key(tid)],
                                        args=[token, ttl_ms, dead.get(tid, "")], client=pipe)
            results = await pipe.execute()
        return dict(zip(trade_ids, results))

    async def trade_lease_holders(self, trade_ids: list[str]) -> dict[str, str | None]:
        if not trade_ids:
            return {}
        values = await self.r.mget([lease_key(f"trade:{t}") for t in trade_ids])
        return dict(zip(trade_ids, values))

    async def release_trade_leases(self, values: dict[str, str]) -> None:
        """Give up trades (value = the exact lease value we hold), e.g. when shutting down."""
        for tid, value in values.items():
            await self._release(keys=[lease_key(f"trade:{tid}")], args=[value])

    # -- intake stream

    async def ensure_intake_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.r.xgroup_create(INTAKE, INTAKE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue_intake(self, trade_id: str) -> None:
        await self.r.xadd(INTAKE, {"trade_id": trade_id}, maxlen=100_000, approximate=True)

    async def read_intake(self, consumer: str, count: int, min_idle_ms: int) -> list[tuple[str, str]]:
        """New entries for this consumer, plus entries a dead consumer read and never acked (older than
        `min_idle_ms`): [(entry id, trade id)]."""
        from redis.exceptions import ResponseError

        try:
            return await self._read_intake(consumer, count, min_idle_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_intake_group()  # a fresh (or flushed) Redis
            return await self._read_intake(consumer, count, min_idle_ms)

    async def _read_intake(self, consumer: str, count: int, min_idle_ms: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        claimed = await self.r.xautoclaim(INTAKE, INTAKE_GROUP, consumer, min_idle_ms, "0-0", count=count)
        for entry_id, data in claimed[1]:
            if data:
                out.append((entry_id, data["trade_id"]))
        fresh = await self.r.xreadgroup(INTAKE_GROUP, consumer, {INTAKE: ">"}, count=count)
        for _stream, entries in fresh or []:
            out += [(entry_id, data["trade_id"]) for entry_id, data in entries]
        return out

    async def ack_intake(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.r.xack(INTAKE, INTAKE_GROUP, *entry_ids)
            await self.r.xdel(INTAKE, *entry_ids)

    # -- live workers

    async def heartbeat(self, token: str, ttl: float) -> list[str]:
        """Record that `token` is alive; returns the tokens of the live workers (heartbeat within `ttl`)."""
        now = time.time()
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS, {token: now})
            pipe.zremrangebyscore(WORKERS, "-inf", now - 10 * ttl)
            pipe.zrangebyscore(WORKERS, now - ttl, "+inf")
            res = await pipe.execute()
        return list(res[2])

    async def workers_seen(self, since: float) -> list[str]:
        """The worker tokens whose last heartbeat is at or after `since` (wall clock); a read only."""
        return list(await self.r.zrangebyscore(WORKERS, since, "+inf"))

    async def leave(self, *tokens: str) -> None:
        if tokens:
            await self.r.zrem(WORKERS, *tokens)

    # -- outboxes: actions routed to the worker that signs for an account

    async def route(self, account: str, trade_id: str, ttl_ms: int) -> bool:
        """Ask the signer of `account` to act on `trade_id` (deduplicated for ttl_ms). True if queued now."""
        if not await self.r.set(f"{outbox_key(account)}:{trade_id}", "1", nx=True, px=ttl_ms):
            return False
        await self.r.rpush(outbox_key(account), trade_id)
        return True

    async def take_routed(self, accounts: list[str], count: int) -> list[str]:
        """Trade ids routed to these accounts (removed from their outboxes)."""
        out: list[str] = []
        for account in accounts:
            out += await self.r.lpop(outbox_key(account), count) or []
        return out

    async def release_leases(self, names: list[str], token: str) -> None:
        for name in names:
            await self._release(keys=[lease_key(name)], args=[token])

    async def account_lease_holders(self, names: list[str]) -> dict[str, str | None]:
        values = await self.r.mget([lease_key(n) for n in names]) if names else []
        return dict(zip(names, values))

    async def lease_holder(self, name: str) -> str | None:
        return await self.r.get(lease_key(name))

    async def terminal_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in (await self.r.hgetall(COUNTS)).items()}

    async def count_open(self) -> int:
        return int(await self.r.zcard(OPEN))

    # -- strays: locks to refund as a watcher (see the key list above)

    async def add_strays(self, chain: str, locks: list[dict[str, Any]]) -> int:
        """Remember locks to refund at their timelock (idempotent); how many were new."""
        if not locks:
            return 0
        members = {json.dumps(lock, sort_keys=True): int(lock["timelock"]) for lock in locks}
        return int(await self.r.zadd(strays_key(chain), members, nx=True))

    async def due_strays(self, chain: str, now: int, limit: int = 200) -> list[dict[str, Any]]:
        """Strays whose timelock is at or before `now` (the chain's clock), oldest first."""
        raw = await self.r.zrangebyscore(strays_key(chain), "-inf", now, start=0, num=limit)
        return [json.loads(m) for m in raw]

    async def drop_strays(self, chain: str, locks: list[dict[str, Any]]) -> None:
        if locks:
            await self.r.zrem(strays_key(chain), *(json.dumps(lock, sort_keys=True) for lock in locks))

    async def count_strays(self, chain: str) -> int:
        return int(await self.r.zcard(strays_key(chain)))

    async def get_cursor(self, chain: str) -> tuple[int, str, int | None] | None:
        """(height, hash, chain id) of the ledger's last processed block; the chain id is None in a cursor
        written before it was kept."""
        data = await self.r.hgetall(cursor_key(chain))
        if not data:
            return None
        return int(data["height"]), data["hash"], (int(data["chain_id"]) if data.get("chain_id") else None)

    async def reserve_lock_nonce(self, chain_id: int, holder: str, nonce: int, trade_id: str) -> bool:
        """Hold a holder's escrow nonce for one trade's authorisation; True when it is this trade's (now or before)."""
        key = lock_nonce_key(chain_id, holder, nonce)
        if await self.r.set(key, trade_id, nx=True, ex=LOCK_NONCE_TTL):
            return True
        return bool(await self.r.get(key) == trade_id)

    async def take_lock_nonce(self, chain_id: int, holder: str, nonce: int, stale: str, trade_id: str) -> bool:
        """Move a reservation from a trade that no longer uses it to `trade_id` (only if `stale` still holds it)."""
        script = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                  "redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1 end return 0")
        return bool(await self.r.eval(script, 1, lock_nonce_key(chain_id, holder, nonce), stale, trade_id,
                                      LOCK_NONCE_TTL))

    async def release_lock_nonce(self, chain_id: int, holder: str, nonce: int, trade_id: str) -> None:
        """Drop the reservation if `trade_id` holds it."""
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0"
        await self.r.eval(script, 1, lock_nonce_key(chain_id, holder, nonce), trade_id)

    async def lock_nonce_holder(self, chain_id: int, holder: str, nonce: int) -> str | None:
        value = await self.r.get(lock_nonce_key(chain_id, holder, nonce))
        return str(value) if value is not None else None

    async def set_cursor(self, chain: str, height: int, block_hash: str, chain_id: int) -> None:
        await self.r.hset(cursor_key(chain), mapping={"height": height, "hash": block_hash, "chain_id": chain_id})


# A preset dictionary of what every archive repeats makes zlib effective on ~3 KB documents.
_ZDICT = (
    '{"fields":{"st_timelock":"","instruction":"{\\"instruction\\":{\\"tradeId\\":\\"0x\\",\\"stChainId\\":'
    '\\"stToken\\":\\"0x\\",\\"stAmount\\":\\"scChainId\\":\\"scToken\\":\\"0x\\",\\"scAmount\\":'
    '\\"sellerStAccount\\":\\"0x\\",\\"sellerScAccount\\":\\"0x\\",\\"buyerScAccount\\":\\"0x\\",'
    '\\"buyerStAccount\\":\\"0x\\",\\"deadline\\":},\\"signature\\":\\"0x\\"}","t_sc":"","sc_timelock":"",'
    '"created_at":"","hashlock":"","t_st":""},"audit":[{"t":,"actor":"relayer@","event":"accepted"},'
    '{"event":"secret_created","t_st":},{"event":"lock_st_sent","tx":"0x","nonce":,"chain":"st","reaction_ms":,'
    '"batch":},{"event":"state","from":"MATCHED","to":"ST_LOCKED"},{"event":"lock_st_mined","block":,"gas":,'
    '{"event":"sc_lock_planned","t_sc":},{"event":"lock_sc_sent","chain":"sc"},{"event":"lock_sc_mined",'
    '{"event":"state","from":"ST_LOCKED","to":"SC_LOCKED"},{"event":"claim_sc_sent"},{"event":"claim_st_sent"},'
    '{"event":"claim_st_mined"},{"event":"claim_sc_mined"},{"event":"state","from":"SC_CLAIMED","to":"SETTLED"},'
    '{"event":"refund_st_mined"},{"event":"refund_sc_mined"},"to":"ABORTED"},"to":"REFUNDING"}'
).encode()


# Archive formats by version: the preset dictionary each was compressed with. A new dictionary is a new version;
# old archives keep reading with theirs. Version 0 (no prefix) is what the relayer wrote before versions existed.
ARCHIVE_DICTIONARIES = {0: _ZDICT, 1: _ZDICT}
ARCHIVE_VERSION = 1


def _pack(doc: dict[str, Any], version: int = ARCHIVE_VERSION) -> str:
    c = zlib.compressobj(9, zdict=ARCHIVE_DICTIONARIES[version])
    raw = c.compress(json.dumps(doc, separators=(",", ":")).encode()) + c.flush()
    return (f"v{version}:" if version else "") + raw.decode("latin-1")


def _unpack(packed: str) -> dict[str, Any]:
    version, body = 0, packed
    if packed.startswith("v") and ":" in packed[:6]:  # a zlib stream starts with 0x78 ('x'), never 'v'
        head, body = packed.split(":", 1)
        version = int(head[1:])
    d = zlib.decompressobj(zdict=ARCHIVE_DICTIONARIES[version])
    return json.loads(d.decompress(body.encode("latin-1")) + d.flush())


def _create_call(signed: SignedInstruction, state: TradeState, actor: str, now: float, note: str = ""
                 ) -> tuple[list[str], list[str]]:
    """Keys and arguments of the _CREATE script for one new trade."""
    ins = signed.instruction
    record = {"trade_id": ins.tradeId, "instruction": signed.model_dump_json(), "digest": ins.digest(),
              "state": state.value, "version": "1", "created_at": f"{now:.3f}"}
    extra = {"note": note} if note else {}
    entry = _audit_entry(actor, "accepted" if state != TradeState.REJECTED else "rejected", **extra)
    return ([trade_key(ins.tradeId), audit_key(ins.tradeId), OPEN, ALL, COUNTS, state_key(TradeState.REJECTED)],
            [ins.digest(), json.dumps(record), entry, f"{now:.3f}"])


def _audit_entry(actor: str, event: str | None, **data: Any) -> str:
    return json.dumps({"t": round(time.time(), 3), "actor": actor, "event": event, **data}, default=str)
