"""The HTLC ledger interface on an EVM chain: lock, claim, refund, read a swap, follow escrow events.

`EscrowFollower` delivers the escrow's events only once they are `confirmations` blocks deep. It remembers
the hash of the blocks it processed; when the chain no longer has one of them (a reorg deeper than the
confirmations) it rewinds to the last block still on the chain and says so, so the caller drops what it
derived from the removed blocks and the events are fetched again. eth_getLogs over bounded block ranges is
the source of truth; the cursor (height + hash) is handed in and out by the caller (who stores it in Redis).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from eth_typing import HexStr
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import BlockNotFound

from adapters.compliance import ALLOWLIST, TransferRules
from adapters.contracts import (
    abi,
    decode_event,
    dvp_typed_data,
    encode_call,
    event_specs,
    swap_id,
    terms_hash,
    typed_data_digest,
)
from adapters.addresses import checksum
from adapters.errors import LeaseLost, LedgerError, RpcError
from adapters.evm import EvmChain, TxSender
from adapters.log_bloom import watched_logs, withheld_blocks
from adapters.signers import Signer

ESCROW = "HashedTimelockEscrow"
ATOMIC_DVP = "AtomicDvP"
# blocks per follower read: every header is fetched (one batch) to check the answer by its bloom; 100 is within
# the batch limits common node providers set
BLOOM_CHECKED_RANGE = 100
CATCH_UP_SECONDS = 1.0  # how long one poll goes on reading ranges while it is behind
# The escrow's entry points by action kind, single and batched (the single ones carry selector-ordered names, see
# the contract's lockTokens note).
CLAIMED_TOPIC = "0x" + next(t for t, spec in event_specs(ESCROW).items() if spec[0] == "Claimed").hex()
ESCROW_FN = {"lock": "lockTokens", "claim": "claimTokens", "refund": "refund"}
ESCROW_BATCH_FN = {"lock": "lockBatch", "claim": "claimBatch", "refund": "refundBatch"}
ERC20 = "SecurityToken"  # any compiled ERC-20 ABI serves for allowance/approve
# Gas limits for single-swap calls (worst case measured: fresh storage on both balances, allowlisted token,
# ~95k for a lock), with headroom; only gasUsed is paid. Batches are estimated by the node.
SINGLE_GAS = {"lock": 180_000, "claim": 130_000, "refund": 130_000, "settle": 250_000}
# Gas per entry of a batch before any was measured: the worst case (fresh storage, a transfer per entry, no two
# entries to one receiver; the gas report's batches of 50 measure 28.6k per lock, 8.3k per claim or refund).
BATCH_ENTRY_GAS = {"lock": 45_000, "claim": 30_000, "refund": 30_000, "settle": 95_000}
MAX_UINT256 = 2**256 - 1


@dataclass(frozen=True)
class LockedEvent:
    trade_id: bytes
    sender: str
    receiver: str
    token: str
    amount: int
    hashlock: bytes
    timelock: int
    block: int
    tx_hash: str
    log_index: int = 0  # position in its block: orders a swap id's locks and ends (a swap id can be re-locked)

    @cached_property  # a keccak each: asked for every time the trade is decided
    def swap_id(self) -> bytes:
        return swap_id(self.sender, self.trade_id)

    @cached_property
    def terms_hash(self) -> bytes:
        """The value the escrow's slot holds while this lock is live."""
        return terms_hash(self.token, self.amount, self.receiver, self.hashlock, self.timelock)

    def terms(self) -> dict[str, Any]:
        """Every term, JSON-ready: what it takes to refund this lock (Store.add_strays keeps it)."""
        return {"trade_id": "0x" + self.trade_id.hex(), "sender": self.sender, "receiver": self.receiver,
                "token": self.token, "amount": self.amount, "hashlock": "0x" + self.hashlock.hex(),
                "timelock": self.timelock}

    @classmethod
    def from_terms(cls, t: dict[str, Any]) -> LockedEvent:
        return cls(trade_id=bytes.fromhex(t["trade_id"][2:]), sender=t["sender"], receiver=t["receiver"],
                   token=t["token"], amount=int(t["amount"]), hashlock=bytes.fromhex(t["hashlock"][2:]),
                   timelock=int(t["timelock"]), block=0, tx_hash="")


@dataclass(frozen=True)
class SlotsAtDepth:
    """Escrow slots as of one confirmed block (HtlcLedger.slots_at_depth)."""

    block: int
    timestamp: int
    slots: list[bytes]


@dataclass(frozen=True)
class ClaimsAtDepth:
    """The preimages of claims of some swaps up to one confirmed block (HtlcLedger.claims_at_depth)."""

    block: int
    preimages: dict[bytes, bytes]  # swap id -> preimage


@dataclass(frozen=True)
class ClaimedEvent:
    swap_id: bytes
    preimage: bytes
    block: int
    tx_hash: str
    log_index: int = 0


@dataclass(frozen=True)
class RefundedEvent:
    swap_id: bytes
    block: int
    tx_hash: str
    log_index: int = 0


@dataclass(frozen=True)
class SettledEvent:
    """AtomicDvP settled the terms with this EIP-712 digest (same-ledger path)."""

    trade_id: bytes
    digest: bytes
    block: int
    tx_hash: str
    log_index: int = 0


EscrowEvent = LockedEvent | ClaimedEvent | RefundedEvent | SettledEvent


def parse_logs(raw: Any) -> list[dict[str, Any]]:
    """eth_getLogs entries with the fields the follower uses parsed: block and log index as ints, hashes as
    lowercase 0x-hex, topics and data as bytes (a malformed answer raises: the node counts as not answering)."""
    return [{"blockNumber": int(lg["blockNumber"], 16), "blockHash": lg["blockHash"].lower(),
             "transactionHash": lg["transactionHash"].lower(), "logIndex": int(lg["logIndex"], 16),
             "address": checksum(lg["address"]),
             "topics": [bytes.fromhex(t[2:]) for t in lg["topics"]], "data": bytes.fromhex(lg["data"][2:])}
            for lg in raw if not lg.get("removed")]


@dataclass
class FollowResult:
    events: list[EscrowEvent] = field(default_factory=list)
    rewound_to: int | None = None  # set when a reorg removed processed blocks above this height
    # preimages revealed in blocks not yet `confirmations` deep: a secret is a secret whatever happens to the
    # block, so the party still to claim may use it at once (it changes no state; events above do)
    preimages: list[bytes] = field(default_factory=list)
    head: int = 0
    head_timestamp: int = 0
    head_gas_limit: int = 0  # the latest block's gas limit: batches are sized to it
    # a block whose header's logs bloom shows a log of ours the node's eth_getLogs answer left out (log_bloom.py)
    withheld: int | None = None
    withheld_by: str = ""  # the endpoint that left it out
    now_using: str = ""  # set when another endpoint showed the log: it is the active one from now on
    withheld_believed: bool = False  # every endpoint answered the same, or none other could be asked in time
    # blocks at or below the head the node has no header for (a hole in its history: anvil's after a deep reorg)
    missing: list[int] = field(default_factory=list)
    missing_passed: bool = False  # missing for longer than the patience: read past (their events are unknowable)


class EscrowFollower:
    """Follows one escrow's events (and the AtomicDvP's, when given) k blocks deep, detecting reorgs by block
    hash. `confirmed_timestamp` is the timestamp of the last processed block: every event up to that moment
    of the chain's clock has been delivered."""

    def __init__(
        self,
        chain: EvmChain,
        escrow: str,
        *,
        confirmations: int,
        start_height: int,
        start_hash: str | None = None,
        max_range: int = 2000,
        hash_window: int = 256,
        dvp: str | None = None,
        finalized_tag: bool = False,
    ) -> None:
        self.chain = chain
        self.escrow = to_checksum_address(escrow)
        self.addresses = [self.escrow] + ([to_checksum_address(dvp)] if dvp else [])
        self.confirmations = confirmations
        # confirmed = up to the node's `finalized` block (a chain with a finality gadget), not head - (k - 1)
        self.finalized_tag = finalized_tag
        self.height = start_height  # last processed block
        self.max_range = max_range
        self._hashes: OrderedDict[int, str] = OrderedDict()
        if start_hash:
            self._hashes[start_height] = start_hash
        self._hash_window = hash_window
        self._claimed_topic = CLAIMED_TOPIC
        self.confirmed_timestamp = 0
        self.last_head = 0
        self.last_head_timestamp = 0
        self._preimages_read_to = 0  # unconfirmed blocks already searched for preimages
        specs = {name: topic for topic, (name, *_) in event_specs(ESCROW).items()}
        self._watched = watched_logs({self.escrow: [specs[n] for n in ("Locked", "Claimed", "Refunded")],
                                      **{a: [t for t, (n, *_) in event_specs(ATOMIC_DVP).items() if n == "Settled"]
                                         for a in self.addresses[1:]}})
        # how long a block whose logs the headers contradict holds the cursor back when no other endpoint can be
        # asked (a node that drops logs for good is then believed, and the relayer's slot reads take over)
        self.withheld_patience = 5.0
        self._withheld_since: float | None = None  # since when answers with no other endpoint to ask contradict
        self._missing_since: float | None = None  # since when blocks below the head have no header

    @property
    def cursor(self) -> tuple[int, str | None]:
        return self.height, self._hashes.get(self.height)

    def rewind_to(self, height: int) -> None:
        """Process the blocks above `height` again (what a node left out is asked for again)."""
        if height >= self.height:
            return
        self.height = height
        for n in [n for n in self._hashes if n > height]:
            del self._hashes[n]
        self._preimages_read_to = 0

    async def _block_hash(self, number: int) -> str | None:
        return (await self._block(number))[0]

    async def _block(self, number: int) -> tuple[str | None, int]:
        """(hash, timestamp) of a block; (None, 0) when the chain no longer has it."""
        try:
            block = await self.chain.get_block(number)
        except (BlockNotFound, RpcError):  # gone after a rollback (anvil: null, or -32602 out of range)
            return None, 0
        return "0x" + bytes(block["hash"]).hex(), int(block["timestamp"])

    async def _check_reorg(self, head: int) -> int | None:
        """If the last processed block is gone, or above the head (a rollback, a chain replaced under a kept
        cursor), rewind to the newest remembered block still on chain; with none of them on chain, to a hash
        window below the head, never to a height whose blocks were not read on this chain."""
        if self._hashes:
            last = next(reversed(self._hashes))
            if last <= head and await self._block_hash(last) == self._hashes[last]:
                return None
        elif self.height <= head:
            return None  # nothing remembered yet (a fresh start): nothing to compare
        for number in reversed(list(self._hashes)):
            if number <= head and await self._block_hash(number) == self._hashes[number]:
                break
            del self._hashes[number]
        else:
            number = max(0, min(self.height, head) - self._hash_window)
        self.height = number
        return number

    async def poll(self) -> FollowResult:
        """Process every newly confirmed block (bounded range per call), then read the preimages of claims in
        the blocks above them."""
        head_block = await self.chain.get_block("latest")
        head = int(head_block["number"])
        self.last_head, self.last_head_timestamp = head, int(head_block["timestamp"])
        result = FollowResult(head=head, head_timestamp=self.last_head_timestamp,
                              head_gas_limit=int(head_block.get("gasLimit", 0)))
        target: int | None = head - (self.confirmations - 1)
        if self.finalized_tag:
            final = await self.chain.rpc("eth_getBlockByNumber", ["finalized", False])
            # a node with nothing finalized yet (null) confirms nothing this poll, never rewinds
            target = min(int(final["number"], 16), head) if final else None
        # far behind (a restart replaying from an open trade's first block): whole ranges, one after the other,
        # within CATCH_UP_SECONDS, rather than one range a round
        until = time.monotonic() + CATCH_UP_SECONDS
        polled_from = self.height
        while target is not None:
            before = self.height
            try:
                await self._confirmed(result, head, target)
            except LedgerError:
                if self.height == polled_from:
                    raise  # nothing read this poll: it fails as before
                break  # self.height is past the ranges read: their events must be delivered, not dropped
            if result.rewound_to is not None or self.height in (before, target) or time.monotonic() >= until:
                break
        if result.rewound_to is None and head > max(self.height, self._preimages_read_to):
            start = max(self.height, self._preimages_read_to) + 1
            try:
                logs = await self._logs({"address": self.escrow, "fromBlock": hex(start), "toBlock": hex(head),
                                         "topics": [self._claimed_topic]})
            except LedgerError:
                if self.height == polled_from:
                    raise
                return result  # confirmed events delivered; unconfirmed preimages are read next poll
            result.preimages = [ev.preimage for ev in map(self._decode, logs) if isinstance(ev, ClaimedEvent)]
            self._preimages_read_to = head
        elif result.rewound_to is not None:
            self._preimages_read_to = 0
        return result

    async def _confirmed(self, result: FollowResult, head: int, target: int) -> None:
        rewound = await self._check_reorg(head)
        if rewound is not None:
            result.rewound_to = rewound
            return
        if target <= self.height:
            if target < self.height:  # the chain got shorter (rollback) without a hash mismatch yet
                result.rewound_to = self.height = max(target, 0)
            return
        end = min(target, self.height + self.max_range, self.height + BLOOM_CHECKED_RANGE)
        start = self.height + 1
        logs = await self._logs({"address": self.addresses, "fromBlock": hex(start), "toBlock": hex(end)})
        logs = [lg for lg in logs if start <= lg["blockNumber"] <= end]  # a node answering outside the range
        # Logs and hashes must come from one fork: re-read the hash of every block (one trip); its logs bloom
        # also says whether the node left out a log of ours (log_bloom.py)
        wanted = list(range(start, end + 1))
        blocks = await self.chain.rpc_batch([("eth_getBlockByNumber", [hex(n), False]) for n in wanted])
        hashes = {n: (b["hash"].lower() if b else "") for n, b in zip(wanted, blocks)}
        for lg in logs:
            if hashes[lg["blockNumber"]] != lg["blockHash"]:
                return  # a reorg happened while reading: try again next poll
        if not self._hole_passable([n for n in wanted if not hashes[n]], result):
            return
        known = [n for n in wanted if hashes[n]]  # the newest block of the range the node has a header for
        end_timestamp = int(blocks[wanted.index(known[-1])]["timestamp"], 16) if known else self.confirmed_timestamp
        suspects = withheld_blocks(blocks, logs, self._watched)
        if not suspects:
            self._withheld_since = None
        for number in suspects:  # each one cleared, or the range is read again next poll
            if not await self._believe_no_log(number, hashes[number], logs, result):
                return  # (from the endpoint that showed the log, when one did)
        for lg in logs:
            ev = self._decode(lg)
            if ev is not None:
                result.events.append(ev)
        self.height = end
        self.confirmed_timestamp = end_timestamp
        if known:  # only a hash the node showed: an empty one never matches again, and every poll would rewind
            self._hashes[known[-1]] = hashes[known[-1]]
        while len(self._hashes) > self._hash_window:
            self._hashes.popitem(last=False)

    def _hole_passable(self, missing: list[int], result: FollowResult) -> bool:
        """Blocks at or below the head with no header: a node still indexing has them soon, so the cursor holds
        back for `withheld_patience`; one that lost them (anvil's history after a deep reorg) never will, and then
        they are read past, reported (their events are unknowable: the relayer's escrow-slot reads, the chain's
        state, cover what they held). True when the range may be taken."""
        if not missing:
            self._missing_since = None
            return True
        result.missing = missing
        if self._missing_since is None:
            self._missing_since = time.monotonic()
        if time.monotonic() - self._missing_since < self.withheld_patience:
            return False
        result.missing_passed = True  # (its patience is spent until a range comes with every header again)
        return True

    async def _believe_no_log(self, number: int, block_hash: str, logs: list[dict[str, Any]],
                              result: FollowResult) -> bool:
        """Block `number`'s header shows a log of ours that `logs` lacks. Ask every other endpoint for that block
        (its hash, and its logs); an answer counts only from an endpoint that has the same block (a standby
        behind the head, or on another fork, says nothing about it). One that has more of ours becomes the
        active endpoint (False: read again from it). Others answering the same: a bloom false positive (True).
        No other endpoint answers: once answers have contradicted their headers for `withheld_patience`
        seconds, believe them until one matches again, so a node that drops logs for good cannot stop the
        follower (the relayer's escrow-slot reads cover what it hides)."""
        result.withheld, result.withheld_by = number, self.chain.active_url

        def kinds(found: list[dict[str, Any]]) -> set[tuple[str, bytes]]:
            return {(lg["address"], lg["topics"][0]) for lg in found if lg["blockNumber"] == number and lg["topics"]}

        async def same_block_logs(index: int) -> list[dict[str, Any]] | None:
            header, found = await asyncio.gather(
                self.chain.rpc_at(index, "eth_getBlockByNumber", [hex(number), False]),
                self.chain.rpc_at(index, "eth_getLogs", params, parse=parse_logs))
            same = isinstance(header, dict) and str(header.get("hash", "")).lower() == block_hash
            return cast("list[dict[str, Any]] | None", found) if same else None

        ours = kinds(logs)
        params = [{"address": self.addresses, "fromBlock": hex(number), "toBlock": hex(number)}]
        others = [i for i in range(len(self.chain.rpc_urls)) if i != self.chain.active_index]
        answers = await asyncio.gather(*(same_block_logs(i) for i in others))
        for i, theirs in zip(others, answers):
            if theirs is not None and kinds(theirs) - ours:
                self.chain.use(i)
                result.now_using = self.chain.active_url
                return False
        if any(theirs is not None for theirs in answers):
            result.withheld_believed = True  # another endpoint says the same: the bloom was a false positive
            return True
        if self._withheld_since is None:
            self._withheld_since = time.monotonic()
        if time.monotonic() - self._withheld_since < self.withheld_patience:
            return False
        result.withheld_believed = True  # and every later answer until one matches its headers again
        return True

    async def _logs(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """eth_getLogs read raw (web3's formatting of every log was a large share of a busy worker's CPU), with
        the fields the follower uses parsed: block and log index as ints, hashes as lowercase 0x-hex."""
        logs: list[dict[str, Any]] = await self.chain.rpc("eth_getLogs", [params], parse=parse_logs)
        return logs

    def _decode(self, lg: dict[str, Any]) -> EscrowEvent | None:
        block, tx, index = lg["blockNumber"], lg["transactionHash"], lg["logIndex"]
        if lg["address"] == self.escrow:
            decoded = decode_event(ESCROW, lg["topics"], lg["data"])
        elif lg["address"] in self.addresses[1:]:
            decoded = decode_event(ATOMIC_DVP, lg["topics"], lg["data"])
            if decoded is not None and decoded[0] != "Settled":
                return None
        else:
            return None
        if decoded is None:
            return None
        name, args = decoded
        if name == "Settled":
            return SettledEvent(trade_id=bytes(args["tradeId"]), digest=bytes(args["digest"]), block=block, tx_hash=tx,
                                log_index=index)
        if name == "Locked":
            return LockedEvent(
                trade_id=bytes(args["tradeId"]), sender=args["sender"], receiver=args["receiver"],
                token=args["token"], amount=int(args["amount"]), hashlock=bytes(args["hashlock"]),
                timelock=int(args["timelock"]), block=block, tx_hash=tx, log_index=index,
            )
        if name == "Claimed":
            return ClaimedEvent(swap_id=bytes(args["swapId"]), preimage=bytes(args["preimage"]), block=block,
                                tx_hash=tx, log_index=index)
        if name == "Refunded":
            return RefundedEvent(swap_id=bytes(args["swapId"]), block=block, tx_hash=tx, log_index=index)
        return None


class HtlcLedger:
    """One chain's escrow as the engine uses it. Subclasses name the ledger kind."""

    kind = "evm"

    def __init__(self, chain: EvmChain, escrow: str, accounts: Mapping[str, Signer], dvp: str = "",
                 max_priority_fee_wei: int = 200_000_000_000, max_fee_wei: int | None = None) -> None:
        self.chain = chain
        self.escrow = to_checksum_address(escrow)
        self.dvp = to_checksum_address(dvp) if dvp else None  # AtomicDvP on this chain (same-ledger path)
        self.rules = TransferRules(chain)  # the tokens' own transfer rules (adapters/compliance.py)
        self._keys = dict(accounts)
        self.all_senders = {addr: TxSender(chain, acct, max_priority_fee_wei=max_priority_fee_wei,
                                           max_fee_wei=max_fee_wei)
                            for addr, acct in accounts.items()}
        self.senders = dict(self.all_senders)  # the accounts this process may sign for right now
        self._unlimited: set[tuple[str, str, str]] = set()
        self._view = AsyncWeb3().eth.contract(abi=abi(ESCROW))

    async def set_active(self, addresses: set[str]) -> None:
        """Sign only for these accounts from now on. An account taken over from another process re-reads its
        nonce from the chain before its first send."""
        for addr, sender in self.all_senders.items():
            if addr in addresses and addr not in self.senders:
                await sender.resync_nonce()
                self.senders[addr] = sender
                sender.active = True
            elif addr not in addresses:
                self.senders.pop(addr, None)
                sender.active = False  # another worker signs now: never fill "gaps" it may be using

    def share_senders(self, other: HtlcLedger) -> None:
        """Both legs on one chain: use the other ledger's senders, so each account has ONE nonce ledger."""
        self.all_senders, self.senders = other.all_senders, other.senders

    def any_sender(self, prefer: list[str] | None = None) -> TxSender | None:
        for addr in prefer or []:
            if addr in self.senders:
                return self.senders[addr]
        return next(iter(self.senders.values()), None)

    def notify_new_block(self) -> None:
        for s in self.all_senders.values():
            s.notify_new_block()

    # ---- calldata: the escrow's (and AtomicDvP's) ABI lives here, not in the relayer

    @staticmethod
    def swap_id_of(sender: str, trade_id: bytes) -> bytes:
        """The escrow's key of a swap: one live lock per (sender, trade id)."""
        return swap_id(sender, trade_id)

    @staticmethod
    def single_call(kind: str, entry: tuple[Any, ...]) -> str:
        """Calldata of one swap's call: kind is lock | claim | refund | settle; entry its batch entry."""
        if kind == "settle":
            return encode_call(ATOMIC_DVP, "settle", *entry)
        if kind == "refund":
            return encode_call(ESCROW, ESCROW_FN["refund"], entry)
        return encode_call(ESCROW, ESCROW_FN[kind], *entry)

    @staticmethod
    def batch_call(kind: str, entries: list[tuple[Any, ...]]) -> str:
        """Calldata of one batch transaction (all-or-nothing on chain)."""
        if kind == "settle":
            return encode_call(ATOMIC_DVP, "settleBatch", entries)
        return encode_call(ESCROW, ESCROW_BATCH_FN[kind], entries)

    @staticmethod
    def single_gas(kind: str) -> int:
        return SINGLE_GAS[kind]

    def gas_for(self, kind: str, tokens: tuple[str, ...]) -> int | None:
        """The gas limit of one swap's call: fixed for this project's own tokens (their transfer cost is known, and
        no estimate round trip delays the send); None (estimate it) for any other token, whose transfer may call
        an identity registry and compliance modules (ERC-3643) or anything else."""
        if all(self.rules.known(t) == ALLOWLIST for t in tokens):
            return SINGLE_GAS[kind]
        return None

    @staticmethod
    def batch_entry_gas(kind: str) -> int:
        """Gas one entry of a batch may take before any batch was measured (the worst case)."""
        return BATCH_ENTRY_GAS[kind]

    async def swap_slot(self, sid: bytes) -> bytes:
        """The stored terms hash of a swap at the latest block (zero when none is live)."""
        return (await self.swap_slots([sid]))[0]

    async def swap_slots(self, sids: list[bytes], contract: str | None = None) -> list[bytes]:
        """Several swaps' stored terms hashes in one round trip. The escrow keeps a swap's terms hash at the
        storage slot equal to its id (AtomicDvP keeps "settled" at the slot equal to the terms digest), so
        eth_getStorageAt reads it without running the EVM."""
        results = await self.chain.rpc_batch(
            [("eth_getStorageAt", [contract or self.escrow, "0x" + sid.hex(), "latest"]) for sid in sids])
        return [bytes.fromhex(r[2:].rjust(64, "0")) for r in results]

    async def slots_at_depth(self, sids: list[bytes], confirmations: int, finalized: bool = False) -> SlotsAtDepth | None:
        """Several swaps' terms hashes at the newest confirmed block (k deep, or the finalized one), read directly
        with that block's number and timestamp: two small requests, where a follower catching up may wait on
        large log responses. None while the node has no such block."""
        head = await self.chain.rpc("eth_getBlockByNumber", ["finalized" if finalized else "latest", False])
        if not head:
            return None
        number = int(head["number"], 16) - (0 if finalized else confirmations - 1)
        if number < 0:
            return None
        at = hex(number)
        results = await self.chain.rpc_batch([("eth_getBlockByNumber", [at, False])]
                                             + [("eth_getStorageAt", [self.escrow, "0x" + sid.hex(), at]) for sid in sids])
        block, slots = results[0], results[1:]
        if not block:
            return None
        return SlotsAtDepth(number, int(block["timestamp"], 16), [bytes.fromhex(r[2:].rjust(64, "0")) for r in slots])

    async def claims_at_depth(self, sids: list[bytes], from_block: int, confirmations: int,
                              finalized: bool = False) -> ClaimsAtDepth | None:
        """The Claimed events of these swaps from `from_block` to the newest confirmed block (k deep, or the
        finalized one), read directly with the swap ids as a topic filter: a small answer, where a follower catching
        up waits on every event of the escrow. None while the node has no such block."""
        head = await self.chain.rpc("eth_getBlockByNumber", ["finalized" if finalized else "latest", False])
        if not head:
            return None
        number = int(head["number"], 16) - (0 if finalized else confirmations - 1)
        if number < from_block:
            return ClaimsAtDepth(number, {})
        logs = await self.chain.rpc("eth_getLogs", [{
            "address": self.escrow, "fromBlock": hex(from_block), "toBlock": hex(number),
            "topics": [CLAIMED_TOPIC, ["0x" + sid.hex() for sid in sids]]}])
        found: dict[bytes, bytes] = {}
        for lg in logs or []:
            if lg.get("removed") or len(lg.get("topics") or []) < 2 or int(lg["blockNumber"], 16) > number:
                continue
            found[bytes.fromhex(lg["topics"][1][2:])] = bytes.fromhex(lg["data"][2:66])
        return ClaimsAtDepth(number, found)

    def dvp_message(self, terms: tuple[Any, ...]) -> dict[str, Any]:
        assert self.dvp is not None and self.chain.chain_id is not None
        return dvp_typed_data(self.dvp, self.chain.chain_id, terms)

    def dvp_digest(self, terms: tuple[Any, ...]) -> bytes:
        """The settlement's key on chain (the EIP-712 hash of the terms)."""
        return typed_data_digest(self.dvp_message(terms))

    async def authorise_dvp(self, party: str, terms: tuple[Any, ...]) -> bytes:
        """`party`'s EIP-712 signature over the DvP terms; only for accounts whose key we hold. An HSM signs in a
        thread (the event loop goes on)."""
        if self.chain.chain_id is None:
            await self.chain.connect()
        signer, message = self._keys[party], self.dvp_message(terms)
        if getattr(signer, "blocking", False):
            signed = await asyncio.to_thread(signer.sign_typed_data, full_message=message)
        else:
            signed = signer.sign_typed_data(full_message=message)
        return bytes(signed.signature)

    async def allowance(self, owner: str, token: str, spender: str | None = None) -> int:
        """`owner`'s allowance of `token` to the escrow (or `spender`) at the latest block."""
        data = encode_call(ERC20, "allowance", owner, spender or self.escrow)
        raw = await self.chain.call(lambda w3: w3.eth.call({"to": to_checksum_address(token), "data": HexStr(data)}))
        return int.from_bytes(bytes(raw)[-32:], "big")

    async def ensure_allowance(self, owner: str, token: str, amount: int, spender: str | None = None) -> None:
        """Approve the escrow (or `spender`) without limit when the owner's allowance is short; we hold the
        owner's key. An unlimited allowance is remembered (OpenZeppelin never decrements it), saving a call."""
        spender = spender or self.escrow
        if (owner, token, spender) in self._unlimited:
            return
        allowance = await self.allowance(owner, token, spender)
        if allowance < amount:
            if owner not in self.senders:
                raise LeaseLost(f"{self.chain.name}: approving {spender} needs {owner}'s lease", account=owner)
            await self.senders[owner].transact(token, encode_call(ERC20, "approve", spender, MAX_UINT256))
            allowance = MAX_UINT256
        if allowance == MAX_UINT256:
            self._unlimited.add((owner, token, spender))

    # ---- holder-signed locks (lockWithSig / lockWithPermit): the holder signs, any account we hold submits

    async def _uint_calls(self, calls: list[tuple[str, str]]) -> list[int]:
        """Several uint256 view calls [(contract, calldata)] at the latest block, in one round trip."""
        results = await self.chain.rpc_batch([("eth_call", [{"to": to, "data": data}, "latest"]) for to, data in calls])
        return [int(r, 16) if isinstance(r, str) and r not in ("0x", "") else 0 for r in results]

    async def holder_state(self, holder: str, token: str) -> tuple[int, int]:
        """(escrow lock nonce, allowance to the escrow) of `holder` for `token`, in one round trip."""
        lock_nonce, allowance = await self._uint_calls([
            (self.escrow, encode_call(ESCROW, "nonces", holder)),
            (token, encode_call(ERC20, "allowance", holder, self.escrow))])
        return lock_nonce, allowance

    async def permit_nonce(self, token: str, holder: str) -> int | None:
        """The token's ERC-2612 nonce of `holder`; None when the token has no permit (e.g. T-REX)."""
        try:
            return (await self._uint_calls([(token, encode_call(ERC20, "nonces", holder))]))[0]
        except RpcError:
            return None

    async def token_name(self, token: str) -> str:
        """The ERC-20 name (the name of its ERC-2612 permit domain)."""
        raw = await self.chain.rpc("eth_call", [{"to": token, "data": encode_call(ERC20, "name")}, "latest"])
        data = bytes.fromhex(raw[2:])
        length = int.from_bytes(data[32:64], "big")
        return data[64:64 + length].decode()

    @staticmethod
    def signed_lock_call(terms: tuple[Any, ...], sender: str, deadline: int, signature: bytes,
                         permit: tuple[int, int, bytes, bytes] | None = None) -> str:
        """Calldata of lockWithSig (or lockWithPermit with `permit` = (deadline, v, r, s)): terms as lockTokens."""
        if permit is None:
            return encode_call(ESCROW, "lockWithSig", terms, sender, deadline, signature)
        return encode_call(ESCROW, "lockWithPermit", terms, sender, deadline, signature, *permit)

    def follower(self, *, confirmations: int, start_height: int, start_hash: str | None,
                 dvp: str | None = None, finalized_tag: bool = False) -> EscrowFollower:
        return EscrowFollower(self.chain, self.escrow, confirmations=confirmations, start_height=start_height,
                              start_hash=start_hash, dvp=dvp, finalized_tag=finalized_tag)

