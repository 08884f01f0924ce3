"""An eth_getLogs answer checked against the blocks' logs blooms (adapters/log_bloom.py), without a chain: a block
whose bloom shows an escrow event the answer lacks is named; an answer that has it, a bloom of another contract
or event, and a block without a bloom are not. And the follower on a fake chain behind endpoints that drop logs:
it takes the log from the one that has it, goes on after its patience when no other can be asked, and at once
when every endpoint agrees (a false positive)."""

from __future__ import annotations

import asyncio
import os

from eth_bloom import BloomFilter
from eth_utils import to_canonical_address, to_checksum_address

from adapters.contracts import event_specs
from adapters.htlc import ESCROW as ESCROW_CONTRACT
from adapters.htlc import EscrowFollower
from adapters.log_bloom import watched_logs, withheld_blocks

ESCROW = to_checksum_address("0x" + "11" * 20)
OTHER = to_checksum_address("0x" + "22" * 20)
LOCKED, CLAIMED, UNRELATED = os.urandom(32), os.urandom(32), os.urandom(32)
WATCHED = watched_logs({ESCROW: [LOCKED, CLAIMED]})
CLAIMED_EVENT = next(t for t, spec in event_specs(ESCROW_CONTRACT).items() if spec[0] == "Claimed")


def block(number: int, *logs: tuple[str, bytes]) -> dict[str, str]:
    bloom = BloomFilter()
    for address, topic in logs:
        bloom.add(to_canonical_address(address))
        bloom.add(topic)
    return {"number": hex(number), "logsBloom": "0x" + int(bloom).to_bytes(256, "big").hex()}


def log(number: int, address: str, topic: bytes) -> dict[str, object]:
    return {"blockNumber": number, "address": address, "topics": [topic, os.urandom(32)]}


def test_a_block_whose_bloom_shows_an_escrow_event_the_answer_lacks_is_named():
    blocks = [block(7), block(8, (ESCROW, CLAIMED)), block(9, (ESCROW, LOCKED))]
    assert withheld_blocks(blocks, [log(9, ESCROW, LOCKED)], WATCHED) == [8]
    assert withheld_blocks(blocks, [], WATCHED) == [8, 9]
    assert withheld_blocks(blocks, [log(8, ESCROW, CLAIMED)], WATCHED) == [9]


def test_an_answer_that_matches_its_blooms_is_believed():
    blocks = [block(8, (ESCROW, CLAIMED), (ESCROW, LOCKED)), block(9, (OTHER, LOCKED)), block(10, (ESCROW, UNRELATED))]
    assert withheld_blocks(blocks, [log(8, ESCROW, CLAIMED), log(8, ESCROW, LOCKED)], WATCHED) == []


def test_the_address_and_the_signature_of_two_different_logs_look_like_one_a_false_positive():
    """A bloom holds items, not pairs: the follower asks another endpoint before it believes either answer."""
    assert withheld_blocks([block(9, (OTHER, LOCKED), (ESCROW, UNRELATED))], [], WATCHED) == [9]


def test_a_block_gone_or_served_without_a_bloom_is_left_to_the_hash_check():
    assert withheld_blocks([None, {"number": "0x9", "logsBloom": ""}], [], WATCHED) == []


class _Nodes:
    """One chain of `head` blocks behind several endpoints; an endpoint in `dropping` answers eth_getLogs with
    nothing (its headers stay true). The only escrow log is a Claimed event in block 5."""

    def __init__(self, endpoints: int, dropping: set[int], escrow: str, claimed: bytes, behind: set[int] = frozenset(),
                 false_positive_at: int | None = None) -> None:
        self.rpc_urls = [f"http://node{i}.invalid" for i in range(endpoints)]
        self.active_index, self.dropping, self.head = 0, dropping, 8
        self.behind = behind  # endpoints that do not have block 5 yet (no header, no logs)
        self.false_positive_at = false_positive_at  # a block whose bloom matches the Claimed event by chance
        self.log = {"blockNumber": hex(5), "blockHash": self._hash(5), "transactionHash": "0x" + "ab" * 32,
                    "logIndex": "0x0", "address": escrow.lower(), "topics": ["0x" + claimed.hex(), "0x" + "cd" * 32],
                    "data": "0x" + "00" * 64, "removed": False}
        self.bloom = block(5, (escrow, claimed))["logsBloom"]

    @staticmethod
    def _hash(n: int) -> str:
        return "0x" + n.to_bytes(32, "big").hex()

    @property
    def active_url(self) -> str:
        return self.rpc_urls[self.active_index]

    def use(self, index: int) -> None:
        self.active_index = index

    def _header(self, n: int) -> dict[str, str]:
        return {"number": hex(n), "hash": self._hash(n), "timestamp": hex(1000 + n),
                "logsBloom": self.bloom if n in (5, self.false_positive_at) else "0x" + "00" * 256}

    def _answer(self, index: int, method: str, params: list) -> object:
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            return [] if index in self.dropping | self.behind or not lo <= 5 <= hi else [self.log]
        n = int(params[0], 16)
        return None if index in self.behind and n >= 5 else self._header(n)

    async def get_block(self, ident: object) -> dict[str, object]:
        n = self.head if ident == "latest" else int(ident)  # type: ignore[call-overload]
        return {"number": n, "timestamp": 1000 + n, "hash": bytes.fromhex(self._hash(n)[2:]), "gasLimit": 30_000_000}

    async def rpc(self, method: str, params: list, parse=None) -> object:
        out = self._answer(self.active_index, method, params)
        return parse(out) if parse else out

    async def rpc_batch(self, calls: list) -> list:
        return [self._answer(self.active_index, m, p) for m, p in calls]

    async def rpc_at(self, index: int, method: str, params: list, parse=None, timeout: float = 2.0) -> object:
        out = self._answer(index, method, params)
        return parse(out) if parse else out


def _follower(nodes: _Nodes, escrow: str) -> EscrowFollower:
    return EscrowFollower(nodes, escrow, confirmations=1, start_height=0)  # type: ignore[arg-type]


async def test_the_follower_never_reads_past_a_withheld_claim_and_takes_it_from_the_endpoint_that_has_it():
    nodes = _Nodes(2, dropping={0}, escrow=ESCROW, claimed=CLAIMED_EVENT)
    follower = _follower(nodes, ESCROW)
    first = await follower.poll()
    assert first.withheld == 5 and first.now_using == nodes.rpc_urls[1] and follower.height == 0 and not first.events
    second = await follower.poll()  # from the standby, whose answer matches the headers
    assert [type(e).__name__ for e in second.events] == ["ClaimedEvent"] and follower.height == 8


async def test_with_no_endpoint_to_ask_the_follower_holds_back_for_its_patience_then_goes_on():
    nodes = _Nodes(1, dropping={0}, escrow=ESCROW, claimed=CLAIMED_EVENT)
    follower = _follower(nodes, ESCROW)
    follower.withheld_patience = 0.3
    held = await follower.poll()
    assert held.withheld == 5 and not held.withheld_believed and follower.height == 0
    await asyncio.sleep(0.35)
    believed = await follower.poll()
    assert believed.withheld_believed and follower.height == 8 and not believed.events


async def test_every_endpoint_saying_the_same_is_a_bloom_false_positive_and_the_follower_goes_on_at_once():
    nodes = _Nodes(2, dropping={0, 1}, escrow=ESCROW, claimed=CLAIMED_EVENT)
    follower = _follower(nodes, ESCROW)
    res = await follower.poll()
    assert res.withheld == 5 and res.withheld_believed and follower.height == 8 and nodes.active_index == 0


def test_a_bloom_too_full_to_tell_is_not_used():
    """A block of a 1,000-swap batch sets nearly every bit: every event kind would look present (found by the
    bench: a saturated block held an honest single node's follower back for its patience, 5 s)."""
    busy = block(9, *((to_checksum_address("0x" + os.urandom(20).hex()), os.urandom(32)) for _ in range(400)))
    assert withheld_blocks([busy], [], WATCHED) == []


async def test_a_standby_that_has_not_got_the_block_is_no_witness_for_the_answer():
    """A standby behind the head answers [] for a block it does not have: that is not agreement (a reviewer's
    finding): the follower holds back as with no other endpoint."""
    nodes = _Nodes(2, dropping={0}, escrow=ESCROW, claimed=CLAIMED_EVENT, behind={1})
    follower = _follower(nodes, ESCROW)
    res = await follower.poll()
    assert res.withheld == 5 and not res.withheld_believed and follower.height == 0 and nodes.active_index == 0


async def test_a_false_positive_cleared_early_in_the_range_never_clears_a_withheld_block_later_in_it():
    """Block 3's bloom matches by chance (both endpoints agree: no log); block 5's Claimed event is left out by
    the primary. Clearing block 3 must not carry the cursor past block 5 (a reviewer's finding)."""
    nodes = _Nodes(2, dropping={0}, escrow=ESCROW, claimed=CLAIMED_EVENT, false_positive_at=3)
    follower = _follower(nodes, ESCROW)
    res = await follower.poll()
    assert res.withheld == 5 and res.now_using == nodes.rpc_urls[1] and follower.height == 0
    again = await follower.poll()
    assert [type(e).__name__ for e in again.events] == ["ClaimedEvent"] and follower.height == 8


class _HoledNodes(_Nodes):
    """150 blocks, of which the node has lost 99 and 100 (no header by number, no logs): anvil's history after an
    injected deep reorg had such holes (seed 42, 50 rounds: blocks 7864-7867 and 8020 of the coin ledger)."""

    HOLE = frozenset({99, 100})

    def __init__(self) -> None:
        super().__init__(1, dropping=set(), escrow=ESCROW, claimed=CLAIMED_EVENT)
        self.head = 150

    def _answer(self, index: int, method: str, params: list) -> object:
        if method != "eth_getLogs" and int(params[0], 16) in self.HOLE:
            return None
        return super()._answer(index, method, params)

    async def get_block(self, ident: object) -> dict[str, object]:
        from web3.exceptions import BlockNotFound

        if ident in self.HOLE:
            raise BlockNotFound(f"block {ident} not found")
        return await super().get_block(ident)


async def test_a_hole_in_the_nodes_history_at_the_end_of_a_range_is_waited_for_then_passed_never_looped_on():
    """A range read ending in blocks the node no longer has: its empty hash was remembered as the block's, the
    next poll found the block "gone" and rewound, read the range again, and so on for good (the coin ledger's
    follower of seed 42's long run, 22 minutes, every round a `reorg_beyond_confirmations` of depth 0)."""
    nodes = _HoledNodes()
    follower = _follower(nodes, ESCROW)
    follower.withheld_patience = 0.3
    first = await follower.poll()  # a node still indexing would have them soon: held back for its patience
    assert first.missing == [99, 100] and follower.height == 0 and first.rewound_to is None
    await asyncio.sleep(0.35)
    passed = await follower.poll()  # then gone for good: passed, with the events of the rest of the range
    assert passed.missing == [99, 100] and passed.missing_passed and passed.rewound_to is None
    assert follower.height == 150 and [type(e).__name__ for e in passed.events] == ["ClaimedEvent"]
    for _ in range(3):  # and never read again
        again = await follower.poll()
        assert again.rewound_to is None and not again.events and follower.height == 150
