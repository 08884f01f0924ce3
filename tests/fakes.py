"""In-memory fakes of the store and ledger interfaces the driver and the executor use: fast, deterministic tests
of the relayer's logic without anvil or Redis. Each fake keeps only what the real one promises (compare-and-set
versions, one live slot per swap id, one nonce per sent transaction) and records what it was asked to do."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from hexbytes import HexBytes

from adapters.compliance import Transfer
from adapters.errors import TransactionReverted
from adapters.htlc import ClaimsAtDepth, HtlcLedger, LockedEvent, SlotsAtDepth
from relayer.errors import ConcurrentUpdate, CorruptRecord
from relayer.follow import ChainSide
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.states import TERMINAL, TradeState
from relayer.store import TradeRecord


class FakeStore:
    """Trade records (compare-and-set on a version), audit trails, strays and the outbox, in dicts."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, str]] = {}
        self.signed: dict[str, SignedInstruction] = {}
        self.audits: dict[str, list[dict[str, Any]]] = {}
        self.strays: dict[str, list[dict[str, Any]]] = {"st": [], "sc": []}
        self.routed: list[tuple[str, str]] = []
        self.corrupt: set[str] = set()  # trade ids whose records cannot be read back (get_many)

    def put(self, signed: SignedInstruction, state: TradeState = TradeState.MATCHED) -> TradeRecord:
        tid = signed.instruction.tradeId
        self.signed[tid] = signed
        self.fields[tid] = {"state": state.value, "version": "1", "created_at": "0"}
        self.audits[tid] = [{"event": "accepted"}]
        return self.get(tid)

    def get(self, trade_id: str) -> TradeRecord:
        f = self.fields[trade_id]
        return TradeRecord(trade_id, self.signed[trade_id], TradeState(f["state"]), int(f["version"]), dict(f))

    async def update(self, rec: TradeRecord, fields: dict[str, Any], *, actor: str, event: str | None,
                     fence: str = "", **audit: Any) -> TradeRecord:
        current = self.fields[rec.trade_id]
        if int(current["version"]) != rec.version:
            raise ConcurrentUpdate(f"{rec.trade_id} changed")
        current.update({k: str(v) for k, v in fields.items()})
        current["version"] = str(rec.version + 1)
        rec.version += 1
        rec.fields.update({k: str(v) for k, v in fields.items()})
        if "state" in fields:
            rec.state = TradeState(fields["state"])
        if event is not None:
            self.audits[rec.trade_id].append({"event": event, "actor": actor, **audit})
        return rec

    async def add_audits(self, entries: list[tuple[str, str, str, dict[str, Any]]], keep_if_refused: bool = False
                         ) -> None:
        for trade_id, actor, event, data in entries:
            await self.add_audit(trade_id, actor, event, **data)

    async def note(self, trade_id: str, actor: str, event: str, **data: Any) -> None:
        await self.add_audits([(trade_id, actor, event, data)], keep_if_refused=True)

    audits_kept = 0

    async def add_audit(self, trade_id: str, actor: str, event: str, **data: Any) -> None:
        self.audits.setdefault(trade_id, []).append({"event": event, "actor": actor, **data})

    async def add_strays(self, chain: str, terms: list[dict[str, Any]]) -> int:
        new = [t for t in terms if t not in self.strays[chain]]
        self.strays[chain] += new
        return len(new)

    async def route(self, account: str, trade_id: str, ttl_ms: int) -> bool:
        if (account, trade_id) in self.routed:
            return False
        self.routed.append((account, trade_id))
        return True

    async def open_trades(self) -> list[str]:
        return [t for t, f in self.fields.items() if TradeState(f["state"]) not in TERMINAL]

    async def get_many(self, trade_ids: list[str], broken: dict[str, CorruptRecord] | None = None
                       ) -> list[TradeRecord]:
        """As Store.get_many: a record in `corrupt` raises, or is put in `broken` when that is given."""
        out = []
        for t in [t for t in trade_ids if t in self.fields]:
            if t in self.corrupt:
                if broken is None:
                    raise CorruptRecord(t, "unreadable (test)")
                broken[t] = CorruptRecord(t, "unreadable (test)")
                continue
            out.append(self.get(t))
        return out

    async def due_strays(self, chain: str, now: int) -> list[dict[str, Any]]:
        return [t for t in self.strays[chain] if int(t["timelock"]) <= now]

    async def drop_strays(self, chain: str, locks: list[dict[str, Any]]) -> None:
        self.strays[chain] = [t for t in self.strays[chain] if t not in locks]

    def events(self, trade_id: str) -> list[str]:
        return [str(e["event"]) for e in self.audits.get(trade_id, [])]


@dataclass
class FakeSender:
    """A TxSender that mines every transaction at once, unless told a call reverts."""

    address: str
    reverting: set[bytes] = field(default_factory=set)  # calldata fragments whose transaction reverts
    estimate_reverts: bool = False
    sent: list[tuple[str, str, int | None, bool]] = field(default_factory=list)  # (to, data, gas, urgent)
    in_flight: int = 0
    nonce: int = 0

    async def send(self, to: str, data: str, gas: int | None = None, urgent: bool = False) -> Any:
        self.sent.append((to, data, gas, urgent))
        self.nonce += 1
        return _Sent(self.nonce - 1, HexBytes(hashlib.sha256(data.encode()).digest()), data)

    async def wait(self, tx: Any, timeout: float = 120.0) -> dict[str, Any]:
        if any(frag.hex() in tx.data for frag in self.reverting):
            raise TransactionReverted("reverted", reason="TermsMismatch()")
        return {"gasUsed": 50_000, "transactionHash": tx.tx_hash, "blockNumber": 7}

    async def estimate_gas(self, to: str, data: str) -> int:
        if self.estimate_reverts:
            raise TransactionReverted("estimate reverted", reason="TermsMismatch()")
        return 100_000


@dataclass
class _Sent:
    nonce: int
    tx_hash: HexBytes
    data: str


@dataclass
class _Chain:
    name: str
    chain_id: int = 1


class FakeRules:
    """A chain's token rules (adapters.compliance.TransferRules): every transfer allowed unless `refuse` maps its
    (token, sender, receiver) to a reason; `asked` records every question."""

    def __init__(self) -> None:
        self.refuse: dict[tuple[str, str, str], str] = {}
        self.asked: list[Transfer] = []

    async def refusals(self, transfers: list[Transfer]) -> list[str | None]:
        self.asked += transfers
        return [self.refuse.get((t.token, t.sender, t.receiver)) for t in transfers]

    async def refusal(self, transfer: Transfer) -> str | None:
        return (await self.refusals([transfer]))[0]


class FakeLedger:
    """One chain's escrow: slots by swap id; calldata from the real adapter (the ABI is not faked)."""

    kind = "evm"
    single_call = staticmethod(HtlcLedger.single_call)
    batch_call = staticmethod(HtlcLedger.batch_call)
    single_gas = staticmethod(HtlcLedger.single_gas)

    def gas_for(self, kind: str, tokens: tuple[str, ...]) -> int:
        return self.single_gas(kind)
    batch_entry_gas = staticmethod(HtlcLedger.batch_entry_gas)
    swap_id_of = staticmethod(HtlcLedger.swap_id_of)
    signed_lock_call = staticmethod(HtlcLedger.signed_lock_call)

    def __init__(self, name: str, escrow: str, keys: list[str]) -> None:
        self.chain = _Chain(name)
        self.escrow = escrow
        self.dvp = None
        self.all_senders = {a: FakeSender(a) for a in keys}
        self.senders = dict(self.all_senders)
        self.slots: dict[bytes, bytes] = {}
        self.allowances: list[tuple[str, str, int]] = []
        self.rules = FakeRules()
        self.holders: dict[str, tuple[int, int]] = {}  # holder -> (escrow lock nonce, allowance): holder-signed
        self.depth: tuple[int, int] = (100, 0)  # the newest confirmed block: (number, timestamp)
        self.claims: dict[bytes, bytes] = {}  # swap id -> preimage of its claim, k deep (claims_at_depth)

    async def holder_state(self, holder: str, token: str) -> tuple[int, int]:
        return self.holders.get(holder, (0, 0))

    def any_sender(self, prefer: list[str] | None = None) -> FakeSender | None:
        for addr in prefer or []:
            if addr in self.senders:
                return self.senders[addr]
        return next(iter(self.senders.values()), None)

    async def swap_slots(self, sids: list[bytes], contract: str | None = None) -> list[bytes]:
        return [self.slots.get(s, bytes(32)) for s in sids]

    async def swap_slot(self, sid: bytes) -> bytes:
        return self.slots.get(sid, bytes(32))

    async def claims_at_depth(self, sids: list[bytes], from_block: int, confirmations: int,
                              finalized: bool = False) -> ClaimsAtDepth:
        """The claims in `claims` (swap id -> preimage) of these swaps, as of the block `depth` names."""
        return ClaimsAtDepth(self.depth[0], {s: p for s, p in self.claims.items() if s in sids})

    async def slots_at_depth(self, sids: list[bytes], confirmations: int, finalized: bool = False) -> SlotsAtDepth:
        """The slots now, as of the block `depth` names (number, timestamp): the fake chain has no history."""
        return SlotsAtDepth(*self.depth, await self.swap_slots(sids))

    async def ensure_allowance(self, owner: str, token: str, amount: int, spender: str | None = None) -> None:
        self.allowances.append((owner, token, amount))

    def lock(self, ev: LockedEvent) -> LockedEvent:
        """Put a lock on the fake chain (its slot holds the terms hash)."""
        self.slots[ev.swap_id] = ev.terms_hash
        return ev


@dataclass
class _Follower:
    last_head: int = 100
    height: int = 0  # the last block whose events were delivered (the fakes deliver none themselves)
    confirmed_timestamp: int = 0


def side(name: str, ledger: FakeLedger, now: int, chain_id: int, role: str | None = None,
         tokens: tuple[str, ...] = ()) -> ChainSide:
    """A followed, fresh chain side whose head is `now` (role: the name unless given)."""
    import time

    from relayer.config import LedgerConfig

    ledger.chain.chain_id = chain_id
    config = LedgerConfig(name=name, role=role or name, chain_id=chain_id, rpc_urls=["http://fake.invalid"],  # type: ignore[arg-type]
                          escrow=ledger.escrow, tokens=list(tokens), confirmations=1, block_time=1.0)
    s = ChainSide(name, ledger, config)  # type: ignore[arg-type]  # a duck-typed fake of HtlcLedger
    s.follower = _Follower(confirmed_timestamp=now)  # type: ignore[assignment]
    s.head, s.head_timestamp, s.head_seen_at, s.fresh = 100, now, time.time(), True
    return s


def lock_event(trade_id: bytes, sender: str, receiver: str, token: str, amount: int, hashlock: bytes,
               timelock: int, block: int = 90) -> LockedEvent:
    return LockedEvent(trade_id, sender, receiver, token, amount, hashlock, timelock, block,
                       "0x" + os.urandom(32).hex())
