"""Classify every trade from the chains alone (not Redis, not the relayer's rules): its own ST platform and the coin
ledger, chosen by the instruction's stChainId / scChainId.

SETTLED     both legs claimed
ABORTED     no leg claimed, nothing left locked
ONE-SIDED   exactly one leg claimed (a violation)
STUCK       funds still locked although the lock's timelock has passed (a violation at the end of a run)
PENDING     still locked, timelock not reached (only before the end of a run)
BAD-TERMS-CLAIMED  a lock whose terms differ from the instruction was claimed anyway (a violation)
LOCK-GONE-WITHOUT-EVENT  STUCK by the logs, but the escrow's slot for that swap is empty at the same block: the
            chain's logs and its state disagree (seen once on anvil after an anvil_reorg; nothing is locked, so not
            STUCK; printed apart with its evidence, as the relayer cannot act on a lock the state does not hold)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from web3 import AsyncWeb3

from adapters.contracts import abi, swap_id

VIOLATIONS = ("ONE-SIDED", "STUCK", "BAD-TERMS-CLAIMED")
LOCK_GONE = "LOCK-GONE-WITHOUT-EVENT"


@dataclass
class Leg:
    locked: dict[str, Any] | None = None  # the Locked event args of the expected sender's swap
    claimed: bool = False
    refunded: bool = False
    claimed_block: int | None = None
    gone: bool = False  # no Claimed/Refunded event, yet the escrow's slot is empty (logs and state disagree)


@dataclass
class ChainLogs:
    locks: dict[tuple[bytes, str], dict[str, Any]] = field(default_factory=dict)  # (tradeId, sender) -> args
    claimed: dict[bytes, int] = field(default_factory=dict)  # swapId -> block of the Claimed event
    refunded: set[bytes] = field(default_factory=set)
    gone: set[bytes] = field(default_factory=set)  # swap ids locked with no end event whose slot is empty
    now: int = 0
    rpc_url: str = ""

    async def block_time(self, number: int) -> int:
        """Timestamp of one block (used to date the claims of ONE-SIDED trades)."""
        w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(self.rpc_url))
        try:
            return int((await w3.eth.get_block(number))["timestamp"])
        finally:
            await w3.provider.disconnect()


async def read_chain(rpc_url: str, escrow: str, from_block: int, chunk: int = 5000) -> ChainLogs:
    """Every escrow event from `from_block` to the head, read straight from the node."""
    w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(rpc_url))
    c = w3.eth.contract(address=escrow, abi=abi("HashedTimelockEscrow"))
    out = ChainLogs(rpc_url=rpc_url)
    try:
        head = await w3.eth.get_block("latest")
        out.now = int(head["timestamp"])
        start = from_block
        while start <= head["number"]:
            end = min(head["number"], start + chunk - 1)
            for name in ("Locked", "Claimed", "Refunded"):
                for ev in await c.events[name]().get_logs(from_block=start, to_block=end):
                    a = ev["args"]
                    if name == "Locked":
                        out.locks[(bytes(a["tradeId"]), a["sender"])] = dict(a)
                    elif name == "Claimed":
                        out.claimed[bytes(a["swapId"])] = int(ev["blockNumber"])
                    else:
                        out.refunded.add(bytes(a["swapId"]))
            start = end + 1
        # the locks the logs leave open, against the escrow's storage at the same block (its slot at the swap id
        # holds the terms hash while the lock is live): an empty one means the logs and the state disagree
        open_ids = [swap_id(sender, tid) for (tid, sender) in out.locks]
        open_ids = [sid for sid in open_ids if sid not in out.claimed and sid not in out.refunded]
        for i in range(0, len(open_ids), 200):
            batch = open_ids[i:i + 200]
            slots = await asyncio.gather(*(w3.eth.get_storage_at(escrow, int.from_bytes(sid, "big"), head["number"])
                                           for sid in batch))
            out.gone |= {sid for sid, slot in zip(batch, slots) if not any(bytes(slot))}
    finally:
        await w3.provider.disconnect()
    return out


def _leg(logs: ChainLogs, trade_id: bytes, sender: str) -> Leg:
    sid = swap_id(sender, trade_id)
    return Leg(locked=logs.locks.get((trade_id, sender)), claimed=sid in logs.claimed, refunded=sid in logs.refunded,
               claimed_block=logs.claimed.get(sid), gone=sid in logs.gone)


def classify(ins: dict[str, Any], st: ChainLogs, sc: ChainLogs, delta: int) -> str:
    st_leg, sc_leg = legs(ins, st, sc)
    if sc_leg.claimed and sc_leg.locked:
        a, s = sc_leg.locked, st_leg.locked
        if (a["amount"] != ins["scAmount"] or a["receiver"] != ins["sellerScAccount"] or a["token"] != ins["scToken"]
                or (s is not None and (a["hashlock"] != s["hashlock"] or a["timelock"] > s["timelock"] - delta))):
            return "BAD-TERMS-CLAIMED"
    if st_leg.claimed and sc_leg.claimed:
        return "SETTLED"
    if st_leg.claimed != sc_leg.claimed:
        other, now = (sc_leg, sc.now) if st_leg.claimed else (st_leg, st.now)
        if other.locked and not other.refunded and now < other.locked["timelock"]:
            return "PENDING"
        return "ONE-SIDED"
    for leg, now in ((st_leg, st.now), (sc_leg, sc.now)):
        if leg.locked and not leg.claimed and not leg.refunded and not leg.gone:
            return "STUCK" if now >= leg.locked["timelock"] else "PENDING"
    if any(leg.gone for leg in (st_leg, sc_leg)):
        return LOCK_GONE
    return "ABORTED"


async def read_all(deployment: dict[str, Any], names: tuple[str, ...]) -> dict[int, ChainLogs]:
    """The escrow events of every named chain of the deployment, each read straight from its node, by chain id."""
    out: dict[int, ChainLogs] = {}
    for name in names:
        c = deployment[name]
        out[int(c["chain_id"])] = await read_chain(c["rpc_url"], c["escrow"], c["deploy_block"])
    return out


def of_trade(ins: dict[str, Any], logs: dict[int, ChainLogs]) -> tuple[ChainLogs, ChainLogs]:
    """The trade's ST platform and coin ledger, as its instruction names them."""
    return logs[int(ins["stChainId"])], logs[int(ins["scChainId"])]


def classify_all(instructions: list[dict[str, Any]], logs: dict[int, ChainLogs], delta: int) -> dict[str, str]:
    return {ins["tradeId"]: classify(ins, *of_trade(ins, logs), delta) for ins in instructions}


def legs(ins: dict[str, Any], st: ChainLogs, sc: ChainLogs) -> tuple[Leg, Leg]:
    """The trade's ST leg (the seller's swap) and SC leg (the buyer's swap) as the chains show them."""
    tid = bytes.fromhex(ins["tradeId"][2:])
    return _leg(st, tid, ins["sellerStAccount"]), _leg(sc, tid, ins["buyerScAccount"])
