"""An eth_getLogs answer checked against the blocks' own headers: a node that lost (part of) its log index still
serves headers, and each header's logs bloom holds the address and the topics of every log in its block. A block
whose bloom holds an escrow's address together with one of the event signatures the follower reads, while the
answer has no such log in that block, was most likely left out by the node (a bloom false positive is possible,
so the caller asks another endpoint before it believes either; a bloom too full to tell is not used). Never the
other way round: a bloom cannot prove a log absent from a block that holds it, and that is the direction that
matters (a missed claim or lock)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_bloom import BloomFilter
from eth_utils import to_canonical_address


@dataclass(frozen=True)
class WatchedLog:
    """One kind of log the follower reads: an emitting contract and an event signature (first topic)."""

    address: str  # checksummed, as the follower's parsed logs carry it
    topic: bytes
    mask: int  # the bloom bits both set: the address's three and the topic's three

    @classmethod
    def of(cls, address: str, topic: bytes) -> WatchedLog:
        bits = BloomFilter.from_iterable([to_canonical_address(address), topic])
        return cls(address, topic, int(bits))


# A bloom with more of its 2,048 bits set than this says too little: an event kind looks present by chance with
# probability about fill³ (its three bits), 0.1% at 10%. A block of a 1,000-swap batch sets nearly every bit.
# Such blocks are not checked (the relayer's slot reads still are), so a full block never holds the cursor back.
MAX_FILL = 0.10


def watched_logs(kinds: Mapping[str, Iterable[bytes]]) -> list[WatchedLog]:
    """Every (address, event signature) pair the follower reads, from address -> signatures."""
    return [WatchedLog.of(address, topic) for address, topics in kinds.items() for topic in topics]


def withheld_blocks(blocks: list[dict[str, Any] | None], logs: list[dict[str, Any]],
                    watched: list[WatchedLog]) -> list[int]:
    """Every block (raw eth_getBlockByNumber answers, in order) whose logs bloom shows a watched log that `logs`
    (the follower's parsed eth_getLogs answer over those blocks) lacks; empty when the answer matches."""
    have = {(lg["blockNumber"], lg["address"], lg["topics"][0]) for lg in logs if lg["topics"]}
    out: list[int] = []
    for block in blocks:
        if not block or not block.get("logsBloom"):
            continue  # a block gone (reorg: the hash check decides) or a node that serves no blooms
        bloom, number = int(block["logsBloom"], 16), int(block["number"], 16)
        if bloom.bit_count() > MAX_FILL * 2048:
            continue
        if any(bloom & w.mask == w.mask and (number, w.address, w.topic) not in have for w in watched):
            out.append(number)
    return out
