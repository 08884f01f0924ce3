"""An eth_getLogs answer checked against the blocks' logs blooms (adapters/log_bloom.py), without a chain: a block
whose bloom shows an escrow event the answer lacks is named; an answer that has it, a bloom of another contract
or event, and a block without a bloom are not."""

from __future__ import annotations

import os

from eth_bloom import BloomFilter
from eth_utils import to_canonical_address, to_checksum_address

from adapters.log_bloom import watched_logs, withheld_block

ESCROW = to_checksum_address("0x" + "11" * 20)
OTHER = to_checksum_address("0x" + "22" * 20)
LOCKED, CLAIMED, UNRELATED = os.urandom(32), os.urandom(32), os.urandom(32)
WATCHED = watched_logs({ESCROW: [LOCKED, CLAIMED]})


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
    assert withheld_block(blocks, [log(9, ESCROW, LOCKED)], WATCHED) == 8
    assert withheld_block(blocks, [], WATCHED) == 8
    assert withheld_block(blocks, [log(8, ESCROW, CLAIMED)], WATCHED) == 9


def test_an_answer_that_matches_its_blooms_is_believed():
    blocks = [block(8, (ESCROW, CLAIMED), (ESCROW, LOCKED)), block(9, (OTHER, LOCKED)), block(10, (ESCROW, UNRELATED))]
    assert withheld_block(blocks, [log(8, ESCROW, CLAIMED), log(8, ESCROW, LOCKED)], WATCHED) is None


def test_the_address_and_the_signature_of_two_different_logs_look_like_one_a_false_positive():
    """A bloom holds items, not pairs: the follower asks another endpoint before it believes either answer."""
    assert withheld_block([block(9, (OTHER, LOCKED), (ESCROW, UNRELATED))], [], WATCHED) == 9


def test_a_block_gone_or_served_without_a_bloom_is_left_to_the_hash_check():
    assert withheld_block([None, {"number": "0x9", "logsBloom": ""}], [], WATCHED) is None
