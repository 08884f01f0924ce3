"""Shared EVM ledger code: RPC access with retry and failover, and a per-account transaction sender.

`EvmChain` is one chain reached through a primary and optional standby RPC URLs: every read goes through
`call()`, which retries transport failures with backoff and fails over to the next URL, raising
`RpcUnavailable` only when all of them keep failing. A path that is slow rather than down never fails, so a request
waiting past `slow_after` compares the endpoints' heads, and one that answers in time and is not behind replaces
a slow active endpoint (`_attempt`). `TxSender` owns one account's nonces: it signs locally,
computes the hash before broadcasting (so a resend is recognised), keeps every unmined transaction so a
dropped one is rebroadcast and a stuck one is replaced with a higher fee at the same nonce: no nonce gaps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp
import structlog
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxReceipt

from adapters.contracts import decode_error
from adapters.errors import ReceiptTimeout, RpcError, RpcUnavailable, TransactionDropped, TransactionReverted
from adapters.signers import Signer

T = TypeVar("T")
W3 = AsyncWeb3[Any]  # one endpoint's client (web3 8 types AsyncWeb3 by its provider)
_log = structlog.get_logger("dvp.evm")

# Failures of the way to the node, by type only: retried with backoff, then the next URL. A node that answers
# something that is not JSON (json.JSONDecodeError) or not JSON-RPC (BadResponseFormat) is as good as down.
# A JSON-RPC error is not among them: it is the node's answer (RpcError), and any other exception is a bug.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
    ProviderConnectionError,
    BadResponseFormat,
    TimeExhausted,
    json.JSONDecodeError,
)


def _consume(task: asyncio.Future[Any]) -> None:
    """A raced request's loser may end in an error nobody awaits: read it, or asyncio logs it at collection."""
    if not task.cancelled():
        task.exception()


def _is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSPORT_ERRORS) or _malformed_response(exc)


def _malformed_response(exc: BaseException) -> bool:
    """web3 8 trips over some malformed answers (a JSON list for a single request) in its response handling with
    an AttributeError/KeyError/TypeError instead of BadResponseFormat: garbage from the node, told apart from a bug
    of ours by where it was raised (web3's request manager), not by its message."""
    if not isinstance(exc, (AttributeError, KeyError, TypeError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("web3/manager.py")


def _rpc_error(exc: Web3RPCError) -> RpcError:
    err = (exc.rpc_response or {}).get("error") if isinstance(exc.rpc_response, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return RpcError(str(exc), code=code if isinstance(code, int) else None)


def _raise_rpc_error(error: Any) -> None:
    code = error.get("code") if isinstance(error, dict) else None
    raise RpcError(str(error), code=code if isinstance(code, int) else None)


class EvmChain:
    """One EVM chain behind a primary and optional standby RPC URLs (in order of preference)."""

    def __init__(
        self,
        name: str,
        rpc_urls: Sequence[str],
        *,
        request_timeout: float = 5.0,
        attempts_per_url: int = 3,
        slow_after: float | None = 1.0,
        fee_mode: str = "eip1559",
        gas_price_wei: int | None = None,
        auth_header: str = "",
    ) -> None:
        if not rpc_urls:
            raise ValueError(f"chain {name}: at least one RPC URL is required")
        if fee_mode not in ("eip1559", "legacy"):
            raise ValueError(f"chain {name}: fee_mode {fee_mode!r}: expected 'eip1559' or 'legacy'")
        self.name = name
        # how transactions pay: EIP-1559 (type 2), or legacy type-0 with a gas price (permissioned chains:
        # GoQuorum, Besu QBFT/IBFT, often at gas price 0); gas_price_wei None = the node's eth_gasPrice
        self.fee_mode = fee_mode
        self.gas_price_wei = gas_price_wei
        self.rpc_urls = list(rpc_urls)
        # a node provider's credentials (Bearer or Basic), sent with every request and the WebSocket handshake
        self.auth_headers = {"Authorization": auth_header} if auth_header else {}
        self._w3s = [
            AsyncWeb3(
                AsyncHTTPProvider(
                    url,
                    request_kwargs={"timeout": aiohttp.ClientTimeout(total=request_timeout),
                                    # headers given replace web3's defaults: Content-Type is said again
                                    **({"headers": {"Content-Type": "application/json", **self.auth_headers}}
                                       if self.auth_headers else {})},
                    exception_retry_configuration=None,  # retries and failover are ours, below
                )
            )
            for url in self.rpc_urls
        ]
        for w3 in self._w3s:
            # Transactions are signed locally with an explicit chain id; web3's validation middleware would
            # fetch eth_chainId again before every eth_call / estimateGas (measured: the worker's top hot spot).
            w3.middleware_onion.remove("validation")
            w3.middleware_onion.remove("ens_name_to_address")
        self._active = 0
        self._attempts_per_url = attempts_per_url
        # seconds a request may wait on the active endpoint before the endpoints' heads are compared (None: never)
        self.slow_after = slow_after
        self._probing: asyncio.Future[int] | None = None
        self.head_seen = 0  # the highest block any answer showed (saw_head): a faster endpoint must be here
        self.slow_switches = 0  # times the active endpoint was left as slow (exported as a metric)
        self.chain_id: int | None = None
        self.rpc_errors = 0  # transport failures seen (exported as a metric)
        self.last_ok = 0.0  # monotonic time of the last successful call (readiness)
        # Bumped on the first success after the endpoints were unreachable: the node may have restarted and
        # lost its mempool, so senders re-broadcast what they have in flight at once (see TxSender.wait).
        self.reconnects = 0
        self._unreachable = False
        self._sessions_loop: asyncio.AbstractEventLoop | None = None  # the loop our keep-alive sessions belong to
        self._sessions_ready: asyncio.Task[None] | None = None

    async def _keep_alive(self) -> None:
        """web3's default HTTP session closes the connection after every request (its TCPConnector has
        force_close=True): a new TCP connection, and a getaddrinfo in a thread, for every RPC call, measured at a
        sixth of a busy worker's CPU in a 1,000-trade burst. Install one keep-alive session per endpoint instead,
        in the running loop (web3 caches sessions per loop and endpoint), before this loop's first request: calls
        made meanwhile wait for it, or web3 would cache its own first."""
        loop = asyncio.get_running_loop()
        if self._sessions_loop is not loop or self._sessions_ready is None:
            self._sessions_loop = loop
            self._sessions_ready = loop.create_task(self._install_sessions())
        if not self._sessions_ready.done():
            await asyncio.shield(self._sessions_ready)

    async def _install_sessions(self) -> None:
        for w3 in self._w3s:
            session = aiohttp.ClientSession(raise_for_status=True,
                                            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30))
            if await w3.provider.cache_async_session(session) is not session:
                await session.close()  # one was cached already for this loop: keep that, close ours

    @property
    def w3(self) -> W3:
        """The AsyncWeb3 of the endpoint currently in use."""
        return self._w3s[self._active]

    @property
    def active_url(self) -> str:
        return self.rpc_urls[self._active]

    async def call(self, fn: Callable[[W3], Awaitable[T]]) -> T:
        """Run `fn(w3)`; on transport errors retry with backoff, then fail over to the next URL."""
        last: BaseException | None = None
        await self._keep_alive()
        for _ in range(len(self._w3s)):
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(_is_transport_error),
                    stop=stop_after_attempt(self._attempts_per_url),
                    wait=wait_exponential(multiplier=0.1, max=2.0),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            result = await self._attempt(fn)
                        except BaseException as exc:
                            if _is_transport_error(exc):
                                self.rpc_errors += 1
                            raise
                self.last_ok = time.monotonic()
                if self._unreachable:
                    self._unreachable = False
                    self.reconnects += 1
                return result
            except Web3RPCError as exc:  # the node's own answer: typed, with its JSON-RPC code
                if isinstance(exc, ContractLogicError):
                    raise
                raise _rpc_error(exc) from exc
            except BaseException as exc:
                if not _is_transport_error(exc):
                    raise
                last = exc
                self._active = (self._active + 1) % len(self._w3s)
        self._unreachable = True
        raise RpcUnavailable(f"{self.name}: no RPC endpoint answered ({type(last).__name__}: {last})") from last

    async def _attempt(self, fn: Callable[[W3], Awaitable[T]]) -> T:
        """One try of `fn` at the active endpoint. A path that is slow rather than down never fails, so nothing
        would fail over: when the answer takes longer than `slow_after`, the endpoints are asked for their heads
        (`_leave_if_slow`, one probe shared by every call waiting meanwhile); if the active one cannot answer that
        small request in time and another can, at or above the highest block any answer has shown, that one
        becomes active and `fn` is asked there too. The first answer wins (a value or the node's own error; a
        transport failure waits for the other): both are at least as fresh as anything acted on so far. Sending
        the same signed transaction twice is harmless (TxSender judges by the chain's state)."""
        first = self._active
        if self.slow_after is None or len(self._w3s) < 2:
            return await fn(self._w3s[first])  # nothing to compare with: no task, no timer per call
        asked: dict[asyncio.Future[T], int] = {asyncio.ensure_future(fn(self._w3s[first])): first}
        probe: asyncio.Future[int] | None = None
        try:
            done, _ = await asyncio.wait(asked, timeout=self.slow_after)
            if not done:
                probe = asyncio.shield(self._leave_if_slow(first))
            pending: set[asyncio.Future[Any]] = set(asked) | ({probe} if probe is not None else set())
            failure: BaseException | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if finished is probe:
                        if (moved := probe.result()) != first:
                            again = asyncio.ensure_future(fn(self._w3s[moved]))
                            asked[again] = moved
                            pending.add(again)
                        continue
                    exc = finished.exception()
                    if exc is None or not _is_transport_error(exc):
                        return finished.result()
                    failure = failure or exc
            assert failure is not None
            raise failure
        finally:
            leftovers: list[asyncio.Future[Any]] = [*asked, *([probe] if probe is not None else [])]
            for left in leftovers:
                if not left.done():
                    left.cancel()  # the shared probe itself is shielded: other waiters keep it
                left.add_done_callback(_consume)

    def _leave_if_slow(self, slow: int) -> asyncio.Future[int]:
        """The probe deciding which endpoint to use now that `slow` kept a request waiting (one at a time)."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._find_faster(slow))
        return self._probing

    async def _find_faster(self, slow: int) -> int:
        if self._active != slow:
            return self._active  # another call's probe moved already
        assert self.slow_after is not None
        if not self.head_seen:
            return slow  # no block seen yet: no way to tell a faster endpoint from one that lags
        heads = await self.heads(timeout=self.slow_after)
        if heads[slow] is not None:
            return slow  # it answers a small request in time: that one request was slow, not the path
        fresh = [i for i, h in enumerate(heads) if h is not None and h >= self.head_seen]
        if not fresh:
            return slow  # none answers, or only ones behind what was seen: a stale node is worse than a slow one
        best = max(fresh, key=lambda i: heads[i] or 0)
        self._active = best
        self.slow_switches += 1
        _log.warning("rpc_endpoint_slow", chain=self.name, left=self.rpc_urls[slow], now_using=self.rpc_urls[best],
                     waited_s=self.slow_after, head=heads[best], head_seen=self.head_seen)
        return best

    def saw_head(self, number: int) -> None:
        """A block number an answer showed (a head, a block, a receipt, the follower's cursor): an endpoint below the
        highest is never switched to as faster."""
        if number > self.head_seen:
            self.head_seen = number

    def _saw_block(self, block: Any) -> Any:
        """Note a block or receipt answer's number (see saw_head); returns it unchanged."""
        number = block.get("number", block.get("blockNumber")) if isinstance(block, dict) else None
        if isinstance(number, str):
            number = int(number, 16) if number.startswith("0x") else None
        if isinstance(number, int):
            self.saw_head(number)
        return block

    async def heads(self, timeout: float = 2.0) -> list[int | None]:
        """Every endpoint's latest block number, each asked directly, at once (None: it did not answer in time)."""
        await self._keep_alive()

        async def one(w3: W3) -> int | None:
            try:
                return int(await asyncio.wait_for(w3.eth.block_number, timeout))
            except Exception:  # noqa: BLE001 - any failure means "no answer" here; call() handles the real errors
                return None

        return list(await asyncio.gather(*(one(w3) for w3 in self._w3s)))

    @property
    def active_index(self) -> int:
        return self._active

    def use(self, index: int) -> None:
        """Send every call to endpoint `index` from now on (a standby found ahead of a stalled primary)."""
        self._active = index

    async def connect(self) -> int:
        """Read and remember the chain id (also a reachability check)."""
        self.chain_id = await self.call(lambda w3: w3.eth.chain_id)
        return self.chain_id

    async def block_number(self) -> int:
        number = int(await self.call(lambda w3: w3.eth.block_number))
        self.saw_head(number)
        return number

    async def get_block(self, ident: int | str) -> Any:
        """A block by number or tag ("latest", "safe", ...); BlockNotFound when the chain has no such block."""
        # ignore: web3 types the identifier as a Literal of tags or a BlockNumber; any int or tag string is accepted
        return self._saw_block(await self.call(lambda w3: w3.eth.get_block(ident)))  # type: ignore[arg-type]

    async def now(self) -> int:
        """The chain's clock: the timestamp of its latest block."""
        block = await self.get_block("latest")
        return int(block["timestamp"])

    async def receipt(self, tx_hash: HexBytes | str) -> TxReceipt | None:
        """The receipt, or None when the transaction is not mined (or unknown)."""

        async def fetch(w3: W3) -> TxReceipt | None:
            try:
                return await w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        return await self.call(fetch)

    async def outcome(self, tx_hash: HexBytes | str) -> TxReceipt | None:
        """The receipt's outcome only (status, gasUsed, blockNumber, blockHash, transactionHash, contractAddress;
        no logs), or None while the transaction is not mined. Read raw: a batch's receipt carries a log per swap,
        and web3 formatting them all (checksums, HexBytes) on every poll cost more CPU than anything else in a
        1,000-trade round. receipt() gives the whole receipt."""
        def parse(raw: Any) -> TxReceipt | None:
            if raw is None:
                return None
            contract = raw.get("contractAddress")
            return cast(TxReceipt, {
                "status": int(raw["status"], 16), "gasUsed": int(raw["gasUsed"], 16),
                "blockNumber": int(raw["blockNumber"], 16), "blockHash": HexBytes(raw["blockHash"]),
                "transactionHash": HexBytes(raw["transactionHash"]),
                "contractAddress": to_checksum_address(contract) if contract else None,
            })

        result: TxReceipt | None = await self.rpc("eth_getTransactionReceipt", [HexBytes(tx_hash).to_0x_hex()],
                                                  parse=parse)
        return cast("TxReceipt | None", self._saw_block(result))

    async def rpc(self, method: str, params: list[Any], parse: Callable[[Any], Any] | None = None) -> Any:
        """A raw JSON-RPC call (anvil test controls, eth_getLogs, ...). `parse` turns the result into what the
        caller uses; an answer it cannot parse counts as a node that does not answer (retried, then the standby
        URL), never as an error of the caller's."""

        async def raw(w3: W3) -> Any:
            resp: Any = await w3.provider.make_request(method, params)
            if not isinstance(resp, dict) or ("result" not in resp and "error" not in resp):
                raise BadResponseFormat(f"not a JSON-RPC response: {str(resp)[:200]}")
            if "error" in resp:
                _raise_rpc_error(resp["error"])
            if parse is None:
                return resp["result"]
            try:
                return parse(resp["result"])
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise BadResponseFormat(f"malformed {method} answer: {str(resp['result'])[:200]}") from exc

        result = await self.call(raw)
        return self._saw_block(result) if method == "eth_getBlockByNumber" else result

    async def rpc_at(self, index: int, method: str, params: list[Any], parse: Callable[[Any], Any] | None = None,
                     timeout: float = 2.0) -> Any:
        """A raw JSON-RPC call to endpoint `index` alone, without retries or failover (comparing what endpoints
        say): its parsed result, or None when it did not answer in time, answered an error or a malformed result."""
        await self._keep_alive()
        try:
            resp: Any = await asyncio.wait_for(self._w3s[index].provider.make_request(method, params), timeout)
            if not isinstance(resp, dict) or "result" not in resp:
                return None
            return parse(resp["result"]) if parse is not None else resp["result"]
        except Exception:  # noqa: BLE001 - any failure means "no answer" here; call() handles the real errors
            return None

    async def rpc_batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Several raw JSON-RPC calls in one HTTP request (one round trip); results in order."""
        if not calls:
            return []

        async def batch(w3: W3) -> list[Any]:
            responses: Any = await w3.provider.make_batch_request(calls)
            if isinstance(responses, dict) and "error" in responses:
                _raise_rpc_error(responses["error"])
            if not isinstance(responses, list) or len(responses) != len(calls) or not all(
                    isinstance(r, dict) and isinstance(r.get("id"), int) and ("result" in r or "error" in r)
                    for r in responses):
                raise BadResponseFormat(f"not a JSON-RPC batch answer: {str(responses)[:200]}")
            by_id = sorted(responses, key=lambda r: int(r["id"]))
            errors = [r["error"] for r in by_id if "error" in r]
            if errors:
                _raise_rpc_error(errors[0])
            return [r["result"] for r in by_id]

        return await self.call(batch)

    async def close(self) -> None:
        for w3 in self._w3s:
            await w3.provider.disconnect()


@dataclass
class SentTx:
    """A signed transaction this sender broadcast; `hashes` holds the original and any fee-bumped replacements."""

    nonce: int
    params: dict[str, Any]
    raw: bytes
    hashes: list[HexBytes] = field(default_factory=list)
    sent_at: float = field(default_factory=time.monotonic)
    urgent: bool = False  # priced to win inclusion now, and bumped sooner (a reveal racing its timelock)

    @property
    def tx_hash(self) -> HexBytes:
        return self.hashes[-1]




class TxSender:
    """Sends transactions for ONE account that this process alone signs for: a local nonce ledger.

    The nonce is read from the chain once, then counted locally under a lock; sign-and-broadcast is
    serialised, waiting for receipts is not, so several transactions can be in flight (pipelining).
    """

    def __init__(
        self,
        chain: EvmChain,
        account: Signer,
        *,
        priority_fee_wei: int = 1_000_000_000,
        rebroadcast_after: float = 3.0,
        bump_after: float = 12.0,
        fee_bump_percent: int = 15,
        gas_margin_percent: int = 20,
        max_priority_fee_wei: int = 200_000_000_000,
        urgent_bump_after: float = 2.0,
        max_fee_wei: int | None = None,
    ) -> None:
        self.chain = chain
        self.account = account
        self.address = account.address
        self.priority_fee_wei = priority_fee_wei
        self.rebroadcast_after = rebroadcast_after
        self.bump_after = bump_after
        self.fee_bump_percent = fee_bump_percent
        self.gas_margin_percent = gas_margin_percent
        self.max_priority_fee_wei = max_priority_fee_wei  # the most an urgent transaction tips (config)
        self.max_fee_wei = max_fee_wei  # the most any transaction pays per gas, bumps included (None: no ceiling)
        self.fee_ceiling_hits = 0  # fees held at the ceiling (exported as a metric)
        self.urgent_bump_after = urgent_bump_after
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self.in_flight: dict[int, SentTx] = {}
        self.history: dict[int, SentTx] = {}  # recent sends by nonce, to re-broadcast one a reorg dropped
        self.shallow: dict[int, SentTx] = {}  # mined but not yet deep, by nonce (see revive_reorged)
        self.revived = 0
        self._history_size = 512
        self.gaps_healed = 0
        self.active = True  # False while another process holds this account's lease
        self._block_seen = asyncio.Event()
        self._fee_cache: tuple[float, int, int] | None = None
        self._fee_stale = True
        self.gas_used_total = 0

    def __repr__(self) -> str:  # never show the key
        return f"TxSender({self.chain.name}, {self.address})"

    def notify_new_block(self) -> None:
        """Called by a block follower: wakes receipt waiters at once instead of waiting for their poll."""
        self._fee_stale = True
        self._block_seen.set()

    def _fee_fields(self, max_fee: int, tip: int) -> dict[str, Any]:
        """The fee part of a transaction in this chain's fee mode (from _fees / _urgent_fees), held at the ceiling."""
        if self.chain.fee_mode == "legacy":
            return self._ceiling({"gasPrice": max_fee})  # no "type": eth_account signs a legacy (type-0) transaction
        return self._ceiling({"maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip, "type": 2})

    def _ceiling(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Hold every per-gas price at max_fee_wei (DVP_MAX_FEE_GWEI): the transaction then waits for the fees to
        come back under it rather than paying more; each hold is counted and logged."""
        cap = self.max_fee_wei
        if cap is None:
            return fields
        held = {k: v for k, v in fields.items() if k in ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")
                and v > cap}
        if held:
            self.fee_ceiling_hits += 1
            _log.warning("fee_ceiling_reached", chain=self.chain.name, account=self.address, ceiling_wei=cap,
                         wanted_wei=max(held.values()))
            fields = {**fields, **dict.fromkeys(held, cap)}
        return fields

    async def _legacy_price(self) -> int:
        if self.chain.gas_price_wei is not None:
            return self.chain.gas_price_wei
        return int(await self.chain.rpc("eth_gasPrice", [], parse=lambda r: int(r, 16)))

    async def _fees(self) -> tuple[int, int]:
        """EIP-1559 fees: 2 × base fee + tip. Cached until the next block (one RPC per block, not per send).
        Legacy fee mode: (gas price, 0)."""
        if self.chain.fee_mode == "legacy":
            return await self._legacy_price(), 0
        cached = self._fee_cache
        if cached is not None and not self._fee_stale and time.monotonic() - cached[0] < 2.0:
            return cached[1], cached[2]
        block = await self.chain.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        self._fee_cache = (time.monotonic(), 2 * base + self.priority_fee_wei, self.priority_fee_wei)
        self._fee_stale = False
        return self._fee_cache[1], self._fee_cache[2]

    async def _urgent_fees(self) -> tuple[int, int]:
        """Fees for a transaction that must be included now (the seller's reveal): a tip above what the top payers
        of the last blocks gave (eth_feeHistory, 90th percentile, + 25%), never below the normal tip nor above
        max_priority_fee_wei; the fee cap leaves room for the base fee to double. Legacy: the gas price, plus a
        quarter when it is not the chain's fixed price (a permissioned chain has no fee market to outbid)."""
        if self.chain.fee_mode == "legacy":
            price = await self._legacy_price()
            return (price if self.chain.gas_price_wei is not None else price * 5 // 4), 0
        hist = await self.chain.rpc("eth_feeHistory", [hex(5), "latest", [90]])
        rewards = [int(r[0], 16) for r in (hist.get("reward") or []) if r]
        base = int((hist.get("baseFeePerGas") or ["0x0"])[-1], 16)  # the next block's
        tip = min(max(self.priority_fee_wei, max(rewards, default=0) * 5 // 4 + 1), self.max_priority_fee_wei)
        return 2 * base + tip, tip

    async def estimate_gas(self, to: str | None, data: bytes | str, value: int = 0) -> int:
        """Gas estimate with margin; raises TransactionReverted with the revert reason if it would fail."""
        tx = {"from": self.address, "data": HexBytes(data), "value": value}
        if to is not None:
            tx["to"] = to
        try:
            # ignore: a plain dict for web3's TxParams TypedDict (the keys are right; the values' NewTypes differ)
            est = await self.chain.call(lambda w3: w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
        except ContractLogicError as exc:
            reason = decode_error(getattr(exc, "data", None)) or str(exc)
            raise TransactionReverted(f"{self.chain.name}: would revert: {reason}", reason=reason) from exc
        return est * (100 + self.gas_margin_percent) // 100

    async def send(self, to: str | None, data: bytes | str, *, gas: int | None = None, value: int = 0,
                   urgent: bool = False) -> SentTx:
        """Sign and broadcast; returns once the node accepted it (or already had it). `urgent` prices it to be
        included in the next block even against a congested mempool (see _urgent_fees)."""
        if gas is None:
            gas = await self.estimate_gas(to, data, value)
        max_fee, tip = await (self._urgent_fees() if urgent else self._fees())
        async with self._lock:
            if self._next_nonce is None:  # once per process: this account is ours alone
                self._next_nonce = await self.chain.call(
                    lambda w3: w3.eth.get_transaction_count(self.address, "pending")
                )
            params: dict[str, Any] = {
                "chainId": self.chain.chain_id or await self.chain.connect(),
                "nonce": self._next_nonce,
                "gas": gas,
                "value": value,
                "data": HexBytes(data),
            }
            params |= self._fee_fields(max_fee, tip)
            if to is not None:
                params["to"] = to
            sent = await self._sign(params)
            sent.urgent = urgent
            await self._broadcast(sent)
            self._next_nonce += 1
            self.in_flight[sent.nonce] = sent
            self.history[sent.nonce] = sent
            if len(self.history) > self._history_size:
                del self.history[min(self.history)]
            return sent

    async def _sign(self, params: dict[str, Any], previous: SentTx | None = None) -> SentTx:
        """Sign at this nonce. A signer that waits on a device or the network (an HSM: `blocking`) signs in a
        thread, so the event loop (the other accounts, the followers, the API) runs meanwhile."""
        if getattr(self.account, "blocking", False):
            signed = await asyncio.to_thread(self.account.sign_transaction, params)
        else:
            signed = self.account.sign_transaction(params)
        sent = previous or SentTx(nonce=params["nonce"], params=params, raw=b"")
        sent.params, sent.raw = params, bytes(signed.raw_transaction)
        sent.hashes.append(HexBytes(signed.hash))
        sent.sent_at = time.monotonic()
        return sent

    async def _broadcast(self, sent: SentTx) -> None:
        """Send the signed bytes. A refusal is judged by the chain's state, not by the node's wording (which differs
        between nodes): if the node knows this very transaction, or the nonce was used already (maybe by this very
        transaction, delivered by an earlier attempt), it counts as sent and the receipt wait decides; otherwise
        the node refused it (underpriced, out of funds, invalid): TransactionReverted."""
        try:
            await self.chain.call(lambda w3: w3.eth.send_raw_transaction(sent.raw))
        except RpcError as exc:
            if await self._node_view(sent) != "unknown" or await self._mined_count() > sent.nonce:
                return
            raise TransactionReverted(f"{self.chain.name}: rejected by node: {exc}", reason=str(exc)) from exc

    async def _find_receipt(self, sent: SentTx) -> TxReceipt | None:
        for h in reversed(sent.hashes):
            receipt = await self.chain.outcome(h)
            if receipt is not None:
                return receipt
        return None

    async def _known_to_node(self, sent: SentTx) -> bool:
        return await self._node_view(sent) != "unknown"

    async def _node_view(self, sent: SentTx) -> str:
        """What the node says of the latest signed version: "pending" (in its pool), "in_block", or "unknown"."""
        async def lookup(w3: W3) -> str:
            try:
                tx = await w3.eth.get_transaction(sent.tx_hash)
            except TransactionNotFound:
                return "unknown"
            return "pending" if tx.get("blockNumber") is None else "in_block"

        return await self.chain.call(lookup)

    async def _bump(self, sent: SentTx, new_hash: bool = False, node_lost_it: bool = False) -> bool:
        """Re-sign at the same nonce with higher fees (never above the ceiling). `new_hash`: the node must see
        another transaction (it lists the old one in a block it never applied): at a chain's fixed gas price, one
        more unit of gas limit. False when nothing new was accepted (held at the ceiling, or refused: the
        version the node has is kept, or with `node_lost_it` the new one, to be offered again)."""
        max_fee, tip = await (self._urgent_fees() if sent.urgent else self._fees())
        params = dict(sent.params)
        factor = 100 + self.fee_bump_percent
        if "gasPrice" in params:
            if self.chain.gas_price_wei is not None:  # a fixed price (often 0): no fee to raise
                if new_hash:
                    params["gas"] += 1
                    await self._sign(params, previous=sent)
                await self._broadcast(sent)
                return True
            params["gasPrice"] = max(max_fee, params["gasPrice"] * factor // 100 + 1)
        else:
            params["maxPriorityFeePerGas"] = max(tip, params["maxPriorityFeePerGas"] * factor // 100 + 1)
            params["maxFeePerGas"] = max(max_fee, params["maxFeePerGas"] * factor // 100 + 1)
        params = self._ceiling(params)
        if params == sent.params:
            return False  # held at the ceiling already: the same transaction waits on
        before = (sent.params, sent.raw, list(sent.hashes))
        await self._sign(params, previous=sent)
        try:
            await self._broadcast(sent)
        except TransactionReverted as exc:
            if not node_lost_it:  # the node keeps the version it has (a replacement below the base fee): wait on it
                sent.params, sent.raw, sent.hashes = before[0], before[1], before[2]
            _log.warning("fee_bump_refused", chain=self.chain.name, account=self.address, nonce=sent.nonce,
                         reason=str(exc)[:200])
            return False
        return True

    async def wait(self, sent: SentTx, *, timeout: float = 120.0, poll: float = 0.25) -> TxReceipt:
        """Wait for the receipt, keeping the transaction alive until `timeout`.

        - the node forgot it (restart, reorg): re-broadcast the same signed bytes, and fill nonce gaps below it;
        - the node was unreachable and is back: do that at once, not at the next periodic check;
        - it sits unmined past `bump_after`: replace it at the same nonce with a higher fee;
        - its nonce was used by another transaction: raise TransactionDropped (the caller re-plans);
        - the node is unreachable for a while: keep waiting (RpcUnavailable does not end the wait).
        Raises ReceiptTimeout after `timeout`; the transaction may still be mined later.
        """
        deadline = time.monotonic() + timeout
        last_check = time.monotonic()
        reconnects = self.chain.reconnects
        while True:
            now = time.monotonic()
            if now > deadline:
                raise ReceiptTimeout(f"{self.chain.name}: no receipt for nonce {sent.nonce} after {timeout:.0f}s")
            try:
                receipt = await self._find_receipt(sent)
                if receipt is not None:
                    return self._done(sent, receipt)
                if now - last_check > self.rebroadcast_after or self.chain.reconnects != reconnects:
                    last_check, reconnects = now, self.chain.reconnects
                    await self._keep_alive(sent)
            except RpcUnavailable:
                pass  # the node is down: its mempool may be gone when it returns; _keep_alive runs then
            self._block_seen.clear()
            try:
                await asyncio.wait_for(self._block_seen.wait(), poll)
            except asyncio.TimeoutError:
                pass

    def _done(self, sent: SentTx, receipt: TxReceipt) -> TxReceipt:
        self.in_flight.pop(sent.nonce, None)
        self.shallow[sent.nonce] = sent
        if len(self.shallow) > self._history_size:  # nobody calls revive_reorged (a one-off tool): stay bounded
            del self.shallow[min(self.shallow)]
        self.gas_used_total += int(receipt["gasUsed"])
        if receipt["status"] != 1:
            raise TransactionReverted(
                f"{self.chain.name}: transaction {receipt['transactionHash'].hex()} reverted",
                tx_hash=receipt["transactionHash"].hex(),
            )
        return receipt

    async def _keep_alive(self, sent: SentTx) -> None:
        """One periodic check of an unmined transaction (see wait)."""
        mined_count = await self._mined_count()
        if mined_count > sent.nonce:
            if await self._find_receipt(sent) is None:  # not a race with its own mining
                self.in_flight.pop(sent.nonce, None)
                raise TransactionDropped(f"{self.chain.name}: nonce {sent.nonce} was used by another transaction")
            return
        await self.heal_gaps(mined_count)
        if time.monotonic() - sent.sent_at > (self.urgent_bump_after if sent.urgent else self.bump_after):
            await self._bump(sent)
        elif not await self._known_to_node(sent):
            await self._offer(sent)

    async def _offer(self, sent: SentTx) -> None:
        """Broadcast a transaction the node does not have. Refused now (a node that drops what a base-fee jump
        priced out): offered at today's fees, up to the ceiling; held there and still refused, it is offered again
        at the next check, until the fees come down. Any other refusal raises TransactionReverted."""
        try:
            await self._broadcast(sent)
        except TransactionReverted:
            if not await self._bump(sent, node_lost_it=True) and not self._at_ceiling(sent):
                raise
            if self._at_ceiling(sent):
                _log.warning("waiting_at_fee_ceiling", chain=self.chain.name, account=self.address, nonce=sent.nonce)

    def _at_ceiling(self, sent: SentTx) -> bool:
        cap = self.max_fee_wei
        return cap is not None and cap in (sent.params.get("maxFeePerGas"), sent.params.get("gasPrice"))

    async def _mined_count(self) -> int:
        return await self.chain.call(lambda w3: w3.eth.get_transaction_count(self.address, "latest"))

    async def transact(
        self, to: str | None, data: bytes | str, *, gas: int | None = None, timeout: float = 120.0
    ) -> TxReceipt:
        """send() then wait(); the whole receipt, logs included."""
        outcome = await self.wait(await self.send(to, data, gas=gas), timeout=timeout)
        return await self.chain.receipt(outcome["transactionHash"]) or outcome

    async def heal_gaps(self, mined_count: int | None = None) -> int:
        """Fill nonce gaps below our next nonce: a transaction mined and then reorged out is not put back in
        the mempool, and every later one of this account would wait behind it forever. Re-broadcast the
        original (same intent, same hash) when we still have it, else a zero-value self-transfer.
        Returns how many nonces were filled.
        """
        if self._next_nonce is None or not self.active:
            return 0
        latest = mined_count if mined_count is not None else await self._mined_count()
        async with self._lock:
            if self._next_nonce is None:
                return 0
            if latest > self._next_nonce:  # someone else used this account: follow the chain
                self._next_nonce = latest
                return 0
            filled = 0
            for nonce in range(latest, self._next_nonce):
                sent = self.history.get(nonce)
                view = await self._node_view(sent) if sent is not None else "unknown"
                if view == "pending":
                    continue
                if view == "in_block" and await self._mined_count() > nonce:
                    continue  # mined since we read the count
                if sent is not None and view == "in_block":
                    # the node lists it in a block, yet the account's nonce says it never ran: a node restored
                    # from an older state than its block index (seen with anvil --state). The same bytes would
                    # be refused as known; the same intent with a new fee (a new hash) goes through.
                    await self._bump(sent, new_hash=True)
                    self.in_flight[nonce] = sent
                elif sent is not None:
                    await self._offer(sent)
                    self.in_flight[nonce] = sent
                else:
                    max_fee, tip = await self._fees()
                    filler = await self._sign({"chainId": self.chain.chain_id, "nonce": nonce, "gas": 21_000,
                                               "value": 0, "to": self.address, "data": b""}
                                              | self._fee_fields(max_fee, tip))
                    await self._broadcast(filler)
                filled += 1
            self.gaps_healed += filled
            return filled

    async def revive_reorged(self, depth: int) -> int:
        """Re-broadcast our transactions that were mined and then reorged out before they were `depth` blocks
        deep. A reorg within the confirmation depth is invisible to the event follower, but it can take our own
        claim with it: anvil (and some nodes) do not put a reorged-out transaction back in the pool, so nobody
        would mine it again. Same signed bytes: same intent, no new nonce. Returns how many were re-sent."""
        if not self.shallow or not self.active:
            return 0
        head = await self.chain.block_number()
        revived = 0
        for nonce, sent in sorted(self.shallow.items()):
            receipt = await self._find_receipt(sent)
            if receipt is not None:
                if head - int(receipt["blockNumber"]) >= depth:
                    self.shallow.pop(nonce, None)  # deep enough: final as far as the relayer is concerned
                    self.history.pop(nonce, None)  # and no nonce gap can open below it any more
                continue
            if await self._mined_count() > nonce:
                self.shallow.pop(nonce, None)  # the nonce was used by another transaction of this account
                continue
            await self._broadcast(sent)
            revived += 1
        self.revived += revived
        return revived

    async def resync_nonce(self) -> None:
        """Forget the local nonce (e.g. after a chain rollback); the next send reads it from the chain."""
        async with self._lock:
            self._next_nonce = None


class HeadWatcher:
    """Wakes a waiter on every new block through an `eth_subscribe("newHeads")` WebSocket subscription.

    Only a doorbell: what happened in the block is always read with eth_getLogs from the persisted cursor, so
    a subscription lost across a reconnect (web3 does not restore them) costs latency, never events. On any
    failure it reconnects with backoff; meanwhile the caller's own polling interval keeps things moving.
    """

    def __init__(self, name: str, ws_url: str, wake: asyncio.Event, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.ws_url = ws_url
        self._headers = dict(headers or {})
        self.wake = wake
        self.connected = False
        self.heads_seen = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        from web3 import WebSocketProvider

        backoff = 0.2
        while not stop.is_set():
            try:
                provider = WebSocketProvider(self.ws_url, websocket_kwargs={"additional_headers": self._headers})
                async with AsyncWeb3(provider) as w3:
                    await w3.eth.subscribe("newHeads")
                    self.connected, backoff = True, 0.2
                    async for _ in w3.socket.process_subscriptions():
                        self.heads_seen += 1
                        self.wake.set()
                        if stop.is_set():
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any ws failure: fall back to polling and reconnect later
                self.failures += 1
                if self.connected or self.failures == 1 or self.failures % 20 == 0:  # said once per outage, not per retry
                    _log.warning("ws_disconnected", chain=self.name, error=str(exc)[:200], error_type=type(exc).__name__,
                                 failures=self.failures, fallback="polling")
            self.connected = False
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)
