"""Stored formats outlive the code that wrote them: an archive in an older format still reads."""

from __future__ import annotations

import json
import zlib

from relayer.protocol.states import TradeState
from relayer.store import _ZDICT, ARCHIVE_VERSION, Store, _pack, _unpack, trade_key
from tests.test_protocol import PTS, SALT, instruction
from relayer.protocol.instruction import sign_instruction


def test_every_archive_version_round_trips_and_says_which_it_is():
    doc = {"fields": {"state": "SETTLED"}, "audit": [{"event": "accepted"}]}
    for version in range(ARCHIVE_VERSION + 1):
        packed = _pack(doc, version)
        assert _unpack(packed) == doc
        assert packed.startswith(f"v{version}:") == (version > 0)


async def test_an_archive_written_before_versions_existed_still_reads(redis_server):
    store = Store.from_url(redis_server.url.rsplit("/", 1)[0] + "/15")
    try:
        signed = sign_instruction(instruction(tradeId="0x" + "cd" * 32), PTS.key, SALT)
        tid = signed.instruction.tradeId
        await store.create(signed, TradeState.MATCHED, "test")
        rec = await store.get(tid)
        await store.update(rec, {"state": "SETTLED", "t_st": 123}, actor="test", event="state")
        assert await store.archive(tid)
        assert (await store.r.hget(trade_key(tid), "archive")).startswith(f"v{ARCHIVE_VERSION}:")
        # what the relayer wrote before this change: zlib with the preset dictionary, no version prefix
        c = zlib.compressobj(9, zdict=_ZDICT)
        legacy = c.compress(json.dumps({"fields": {"t_st": "123"}, "audit": [{"event": "accepted"}]},
                                       separators=(",", ":")).encode()) + c.flush()
        await store.r.hset(trade_key(tid), "archive", legacy.decode("latin-1"))
        rec = await store.get(tid)
        assert rec.state is TradeState.SETTLED and rec.get_int("t_st") == 123
        assert [e["event"] for e in await store.audit(tid)] == ["accepted"]
    finally:
        await store.r.flushdb()
        await store.close()


async def test_more_concurrent_commands_than_connections_wait_for_one_instead_of_failing(redis_server):
    """Found by the bench: a 333-swap batch checked its entries concurrently, each writing its plan to Redis, and
    redis-py's default pool answered "Too many connections" past 100: the batch failed and waited a cooldown."""
    import asyncio

    from relayer.store import POOL_SIZE, Store

    store = Store.from_url(redis_server.url.rsplit("/", 1)[0] + "/15")
    try:
        results = await asyncio.gather(*(store.r.incr("dvp:test:concurrent") for _ in range(5 * POOL_SIZE)))
        assert sorted(results) == list(range(min(results), min(results) + 5 * POOL_SIZE))
        pool = store.r.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= POOL_SIZE  # type: ignore[attr-defined]
    finally:
        await store.r.delete("dvp:test:concurrent")
        await store.close()


async def test_trades_archived_together_each_get_their_own_answer_and_a_corrupt_one_fails_alone(redis_server):
    """Archives made at the same moment share their round trips; a record whose state no longer parses refuses
    only its own archive (it used to, alone), the others are archived."""
    import asyncio

    import pytest

    store = Store.from_url(redis_server.url.rsplit("/", 1)[0] + "/14")
    try:
        ids = []
        for n in range(4):
            signed = sign_instruction(instruction(tradeId="0x" + f"{n + 1:02x}" * 32), PTS.key, SALT)
            await store.create(signed, TradeState.MATCHED, "test")
            rec = await store.get(signed.instruction.tradeId)
            await store.update(rec, {"state": "SETTLED"}, actor="test", event="state")
            ids.append(signed.instruction.tradeId)
        await store.r.hset(trade_key(ids[1]), "state", "NOT_A_STATE")
        results = await asyncio.gather(*(store.archive(t) for t in ids), return_exceptions=True)
        assert results[0] is True and results[2] is True and results[3] is True
        assert isinstance(results[1], ValueError)
        with pytest.raises(ValueError):
            await store.archive(ids[1])
    finally:
        await store.r.flushdb()
        await store.close()


async def test_a_rare_final_state_is_found_among_all_trades_and_older_records_are_indexed_once(redis_server):
    """GET /v1/trades?state=ONE_SIDED is the operator's question "which trades need me": it scanned only the newest
    5,000 trades, so on a busy venue an older ONE_SIDED trade was not listed. ONE_SIDED and REJECTED trades now
    have an index of their own (written by the same scripts as the state), and records written before it existed
    are indexed once at start."""
    from relayer.read_model import ReadModel
    from relayer.store import STATE_INDEX_BUILT, state_key
    from tests.relayer_kit import fresh_db

    store = Store.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{fresh_db()}")
    model = ReadModel.__new__(ReadModel)  # the page reads the store only
    model.store = store
    try:
        trades = []
        for i in range(31):
            signed = sign_instruction(instruction(tradeId="0x" + f"{i:064x}"), PTS.key, SALT)
            await store.create(signed, TradeState.MATCHED, "test")
            trades.append(signed.instruction.tradeId)
        rejected = sign_instruction(instruction(tradeId="0x" + "ee" * 32), PTS.key, SALT)
        await store.create(rejected, TradeState.REJECTED, "test", note="bad terms")
        one_sided = trades[0]  # the oldest trade; the 30 newer ones settle
        rec = await store.get(one_sided)
        await store.update(rec, {"state": "ONE_SIDED"}, actor="test", event="state")
        for tid in trades[1:]:
            await store.update(await store.get(tid), {"state": "SETTLED"}, actor="test", event="state")

        async def listed(state: str) -> list[str]:
            return [r.trade_id for r, _ in await model.page(0, 10, state, scan_most=20)]

        assert await listed("ONE_SIDED") == [one_sided]  # beyond the 20 newest scanned
        assert await listed("REJECTED") == [rejected.instruction.tradeId]
        assert len(await listed("SETTLED")) == 10
        assert await listed("MATCHED") == []
        # records from before the index: gone from it, found again by the one-time build, not twice
        await store.r.delete(state_key(TradeState.ONE_SIDED), state_key(TradeState.REJECTED), STATE_INDEX_BUILT)
        assert await listed("ONE_SIDED") == []
        assert await store.index_states(chunk=7) == 2
        assert await listed("ONE_SIDED") == [one_sided] and await store.index_states() == 0
    finally:
        await store.r.flushdb()
        await store.close()
