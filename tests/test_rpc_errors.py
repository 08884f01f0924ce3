"""RPC failures are classified by type and JSON-RPC code, never by the node's wording (issue 14)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web

from adapters.errors import RpcError, RpcUnavailable
from adapters.evm import EvmChain


async def _node(answer: str):
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.mark.parametrize("garbage", ["<html>502 Bad Gateway</html>", '{"foo": 1}', "[1, 2]"])
async def test_a_node_answering_garbage_is_an_outage(garbage):
    runner, url = await _node(garbage)
    chain = EvmChain("x", [url], attempts_per_url=2)
    try:
        with pytest.raises(RpcUnavailable):
            await chain.block_number()
        assert chain.rpc_errors == 2
    finally:
        await chain.close()
        await runner.cleanup()


async def test_a_json_rpc_error_is_the_nodes_answer_with_its_code_not_an_outage():
    answer = json.dumps({"jsonrpc": "2.0", "id": 0, "error": {"code": -32602, "message": "BlockOutOfRangeError"}})
    runner, url = await _node(answer)
    chain = EvmChain("x", [url])
    try:
        with pytest.raises(RpcError) as err:
            await chain.rpc("eth_getLogs", [{}])
        assert err.value.code == -32602 and chain.rpc_errors == 0  # asked once, not retried, not failed over
        with pytest.raises(RpcError):
            await chain.block_number()
    finally:
        await chain.close()
        await runner.cleanup()


async def test_a_bug_in_the_callers_code_is_not_taken_for_an_outage():
    runner, url = await _node(json.dumps({"jsonrpc": "2.0", "id": 0, "result": "0x1"}))
    chain = EvmChain("x", [url])
    calls = 0

    async def buggy(w3):
        nonlocal calls
        calls += 1
        return {}["missing"]

    try:
        with pytest.raises(KeyError):
            await chain.call(buggy)
        assert calls == 1 and chain.rpc_errors == 0
    finally:
        await chain.close()
        await runner.cleanup()


@pytest.mark.parametrize("result", [
    '[{"blockNumber": null, "topics": []}]',  # eth_getLogs with a log missing its fields
    '{"status": "0x1"}',  # a receipt missing its fields
])
async def test_a_well_formed_answer_with_a_malformed_result_is_an_outage_not_a_crash(result):
    """Found in review: logs and receipts are parsed from the raw answer; a node answering nonsense there raised
    web3's BadResponseFormat outside the retry, which no round catches: every ledger's round failed."""
    from adapters.htlc import EscrowFollower

    runner, url = await _node('{"jsonrpc": "2.0", "id": 0, "result": ' + result + "}")
    chain = EvmChain("x", [url], attempts_per_url=2)
    try:
        with pytest.raises(RpcUnavailable):
            if "status" in result:
                await chain.outcome("0x" + "11" * 32)
            else:
                await EscrowFollower(chain, "0x" + "22" * 20, confirmations=1, start_height=0)._logs({})
    finally:
        await chain.close()
        await runner.cleanup()


async def test_rpc_calls_reuse_their_connection_instead_of_opening_one_each():
    """web3's default session closes the connection after every request; a worker then paid a TCP connect and a
    threaded getaddrinfo per RPC call (a sixth of its CPU in a 1,000-trade burst). Twenty calls, one connection
    (counted by a TCP proxy in front of the node)."""
    from chaos.netproxy import NetProxy
    from deploy.processes import free_port

    runner, url = await _node('{"jsonrpc": "2.0", "id": 0, "result": "0x10"}')
    proxy = await NetProxy("127.0.0.1", int(url.rsplit(":", 1)[1]), free_port()).start()
    chain = EvmChain("x", [proxy.url])
    try:
        for _ in range(20):
            assert await chain.block_number() == 16
        assert proxy.connections == 1, proxy.connections
    finally:
        await chain.close()
        await proxy.stop()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _delayed_pair(primary_answer: str, standby_answer: str):
    """Two fake nodes, each behind a harness TCP proxy (to delay one path and count connections), and a chain
    over both (slow_after 0.3 s); everything closed afterwards."""
    from chaos.netproxy import NetProxy
    from deploy.processes import free_port

    nodes = [await _node(primary_answer), await _node(standby_answer)]
    proxies = [await NetProxy("127.0.0.1", int(url.rsplit(":", 1)[1]), free_port()).start() for _, url in nodes]
    chain = EvmChain("x", [p.url for p in proxies], slow_after=0.3)
    try:
        yield chain, proxies[0], proxies[1]
    finally:
        await chain.close()
        for proxy in proxies:
            await proxy.stop()
        for runner, _ in nodes:
            await runner.cleanup()


async def test_a_slow_primary_is_left_for_a_standby_that_answers_in_time():
    """A path that delays every chunk (chaos `net_delay`) answers, so no retry or failover ever fired: the worker
    read a slow primary while the standby was clear, and saw a reveal too late (chaos seed 7, bot_late_claim). A
    request still waiting after `slow_after` has every endpoint asked for its head; the standby answers in time,
    at the head seen, so it becomes active and the request is asked there too. A primary that answers in time is
    never second-guessed: the standby sees no connection at all."""
    from chaos.netproxy import DELAY

    async with _delayed_pair('{"jsonrpc": "2.0", "id": 0, "result": "0x10"}',
                             '{"jsonrpc": "2.0", "id": 0, "result": "0x10"}') as (chain, primary, standby):
        for _ in range(5):
            assert await chain.block_number() == 16
        assert standby.connections == 0 and chain.active_index == 0

        primary.set(DELAY, latency=3.0)
        assert await asyncio.wait_for(chain.block_number(), 2.5) == 16  # the delayed path needs >= 6 s
        assert chain.active_index == 1 and chain.slow_switches == 1
        before = primary.connections
        assert await asyncio.wait_for(chain.block_number(), 0.25) == 16  # the standby first now: no wait
        assert primary.connections == before


async def test_a_standby_behind_the_head_seen_is_not_taken_for_a_faster_endpoint():
    """A quick standby that lags (head 90 while the follower acted on 100) would answer with an old chain: an old
    head reads as a deep reorg, a missing block as one gone, an old state's error as the truth. The slow primary
    is kept, and its answer is the one returned. With no block seen at all, no endpoint can be judged: none is
    switched to."""
    from chaos.netproxy import DELAY

    async with _delayed_pair('{"jsonrpc": "2.0", "id": 0, "result": "0x64"}',
                             '{"jsonrpc": "2.0", "id": 0, "result": "0x5a"}') as (chain, primary, standby):
        assert await chain.block_number() == 100  # any answer's block counts as seen, not only the follower's
        primary.set(DELAY, latency=0.5)
        assert await asyncio.wait_for(chain.block_number(), 5) == 100
        assert chain.active_index == 0 and chain.slow_switches == 0
        blind = EvmChain("y", [primary.url, standby.url], slow_after=0.3)  # no block seen: nothing to judge by
        try:
            assert await asyncio.wait_for(blind.call(lambda w3: w3.eth.chain_id), 5) == 100
            assert blind.active_index == 0 and blind.slow_switches == 0
        finally:
            await blind.close()
