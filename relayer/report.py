"""Reconciliation and export: one row per trade accepted in a time range, daily totals, and a check of each row
against both chains (`dvp-relayer report --from --to --format csv|json [--verify]`).

Rows come from the store (what the relayer recorded); `--verify` reads the chains themselves: for every trade, the
escrow's Locked / Claimed / Refunded events of its two swaps (the seller's ST swap, the buyer's SC swap) and their
slots, in a few calls per ledger for all the trades (not six per trade). A SETTLED trade must show both swaps
claimed with the instruction's amounts, an ABORTED one neither claimed, a ONE_SIDED one exactly one, and no finished trade may leave a slot holding a lock. What does not agree is
printed; the command exits 1 when anything does not.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector
from hexbytes import HexBytes
from web3 import AsyncWeb3

from adapters.contracts import abi
from relayer.errors import RelayerError
from relayer.protocol.states import TERMINAL, TradeState
from relayer.routing import Route, Routes
from relayer.store import ALL, Store, TradeRecord

_SYMBOL = "0x" + function_signature_to_4byte_selector("symbol()").hex()
_DECIMALS = "0x" + function_signature_to_4byte_selector("decimals()").hex()


@dataclass
class ReportRow:
    trade_id: str
    state: str
    accepted_at: str  # ISO 8601, UTC
    finished_at: str
    seller: str
    buyer: str
    st_ledger: str
    st_token: str  # symbol
    st_amount: str  # in token units (decimals applied)
    sc_ledger: str
    sc_token: str
    sc_amount: str
    st_lock_tx: str = ""
    st_claim_tx: str = ""
    st_refund_tx: str = ""
    sc_lock_tx: str = ""
    sc_claim_tx: str = ""
    sc_refund_tx: str = ""
    gas_used: int = 0  # by this relayer's own transactions for the trade
    verified: str = ""  # --verify: "yes", or why the row could not be checked
    problems: list[str] = field(default_factory=list)  # --verify: what the chains show otherwise


MAX_ROWS = 50_000  # one report; a longer range is asked for in parts


class BadRange(ValueError):
    """Raised when --from / --to (or the API's from / to) is not an ISO date or date-time."""


WHEN_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"


class TooManyRows(ValueError):
    """Raised when the range holds more trades than one report carries (MAX_ROWS): never a silently short one."""


class ImpossibleDate(BadRange):
    """Raised when a date has the right shape but names no day (2026-13-40)."""


def parse_when(text: str) -> float:
    """An ISO date or date-time (UTC when it names no zone) as Unix seconds."""
    if not re.match(WHEN_PATTERN, text):
        raise BadRange(f"{text!r} is not an ISO date or date-time (2026-12-01, 2026-12-01T09:00:00Z)")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ImpossibleDate(f"{text!r} names no such day or time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else ""


class TokenNames:
    """Symbols and decimals read from the tokens themselves, once each."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, int]] = {}

    async def of(self, route_side: Any, token: str) -> tuple[str, int]:
        key = (route_side.name, token)
        if key not in self._seen:
            chain = route_side.ledger.chain
            symbol = await chain.rpc("eth_call", [{"to": token, "data": _SYMBOL}, "latest"])  # down: LedgerError
            decimals = await chain.rpc("eth_call", [{"to": token, "data": _DECIMALS}, "latest"])
            try:
                sym = abi_decode(["string"], bytes.fromhex(symbol[2:]))[0]
                dec = abi_decode(["uint8"], bytes.fromhex(decimals[2:]))[0]
            except Exception:  # noqa: BLE001 - a token without symbol()/decimals(): its address, whole units
                sym, dec = token, 0
            self._seen[key] = (str(sym), int(dec))
        return self._seen[key]


def human(amount: int, decimals: int) -> str:
    """An amount in token units, never in scientific notation (5 base units of an 18-decimal token: 0.000…005)."""
    return format(Decimal(amount).scaleb(-decimals), "f") if decimals else str(amount)


async def trades_between(store: Store, start: float, end: float) -> list[tuple[TradeRecord, list[dict[str, Any]]]]:
    """Trades accepted in [start, end) (the store's index by acceptance time), with their audit trails."""
    ids = await store.r.zrangebyscore(ALL, start, f"({end}", start=0, num=MAX_ROWS + 1)
    if len(ids) > MAX_ROWS:
        raise TooManyRows(f"more than {MAX_ROWS} trades were accepted in the range; ask for a shorter one")
    out = []
    for i in range(0, len(ids), 200):
        for rec in await store.get_many(ids[i:i + 200]):
            out.append((rec, await store.audit(rec.trade_id)))
    return out


async def build_rows(routes: Routes, trades: list[tuple[TradeRecord, list[dict[str, Any]]]]) -> list[ReportRow]:
    names = TokenNames()
    rows = []
    for rec, audit in trades:
        ins = rec.signed.instruction
        try:
            route = routes.route(ins)
        except RelayerError as exc:  # a ledger no longer configured: the row says so, the others go on
            rows.append(ReportRow(
                trade_id=rec.trade_id, state=rec.state.value, accepted_at=_iso(float(rec.fields["created_at"])),
                finished_at="", seller=ins.sellerStAccount, buyer=ins.buyerScAccount, st_ledger=str(ins.stChainId),
                st_token=ins.stToken, st_amount=str(ins.stAmount), sc_ledger=str(ins.scChainId), sc_token=ins.scToken,
                sc_amount=str(ins.scAmount), problems=[f"not verifiable: {exc}"]))
            continue
        st_sym, st_dec = await names.of(route.st, ins.stToken)
        sc_sym, sc_dec = await names.of(route.sc, ins.scToken)
        row = ReportRow(
            trade_id=rec.trade_id, state=rec.state.value, accepted_at=_iso(float(rec.fields["created_at"])),
            finished_at=_iso(float(audit[-1]["t"])) if rec.state in TERMINAL and audit and "t" in audit[-1] else "",
            seller=ins.sellerStAccount, buyer=ins.buyerScAccount, st_ledger=route.st.name, st_token=st_sym,
            st_amount=human(ins.stAmount, st_dec), sc_ledger=route.sc.name, sc_token=sc_sym,
            sc_amount=human(ins.scAmount, sc_dec))
        for entry in audit:
            ev = str(entry.get("event", ""))
            for action in ("lock", "claim", "refund"):
                for leg in ("st", "sc"):
                    if ev == f"{action}_{leg}_mined" and entry.get("tx"):
                        setattr(row, f"{leg}_{action}_tx", entry["tx"])
                        row.gas_used += int(entry.get("gas") or 0)
        rows.append(row)
    return rows


VERIFY_CHUNK = 100  # trade or swap ids OR-ed into one eth_getLogs topic filter


async def _swap_records(route_side: Any, swaps: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    """The chain's own record of each swap (trade id, sender) on one ledger: its Locked args (by this sender),
    whether it was claimed or refunded, and whether its slot still holds a lock. A few calls for all of them:
    the Locked events by trade id and the Claimed / Refunded events by swap id, VERIFY_CHUNK ids per eth_getLogs
    (the node's topic index answers each), and the slots in one batch."""
    ledger = route_side.ledger
    escrow = AsyncWeb3().eth.contract(abi=abi("HashedTimelockEscrow"))
    start = route_side.config.start_block or 0
    sids = [ledger.swap_id_of(sender, tid) for tid, sender in swaps]

    async def logs(topic0: Any, ids: list[bytes]) -> list[Any]:
        found: list[Any] = []
        for i in range(0, len(ids), VERIFY_CHUNK):
            topics = [topic0, ["0x" + x.hex() for x in ids[i:i + VERIFY_CHUNK]]]
            found += await ledger.chain.call(lambda w3, topics=topics: w3.eth.get_logs(
                {"address": ledger.escrow, "fromBlock": start, "toBlock": "latest", "topics": topics}))
        return found

    events = escrow.events
    locks: dict[tuple[bytes, str], dict[str, Any]] = {}
    for lg in await logs(events.Locked().topic, sorted({tid for tid, _ in swaps})):  # in chain order: the last wins
        args = events.Locked().process_log(lg)["args"]
        locks[(bytes(args["tradeId"]), args["sender"])] = dict(args)
    ended = await logs([events.Claimed().topic, events.Refunded().topic], sorted(set(sids)))
    claimed_topic = bytes(HexBytes(events.Claimed().topic))
    claimed = {bytes(lg["topics"][1]) for lg in ended if bytes(lg["topics"][0]) == claimed_topic}
    refunded = {bytes(lg["topics"][1]) for lg in ended if bytes(lg["topics"][0]) != claimed_topic}
    slots = await ledger.swap_slots(sids) if sids else []
    return [{"lock": locks.get((tid, sender)), "claimed": sid in claimed, "refunded": sid in refunded,
             "live": slot != bytes(32)} for (tid, sender), sid, slot in zip(swaps, sids, slots)]


async def verify(routes: Routes, rows: list[ReportRow], trades: list[tuple[TradeRecord, Any]]) -> int:
    """Check each row against both chains; the problems go into the rows. Returns how many rows disagree."""
    bad = 0
    checked: list[tuple[ReportRow, TradeRecord, Route]] = []
    for row, (rec, _) in zip(rows, trades):
        ins = rec.signed.instruction
        if row.problems:  # not verifiable (its ledger is not configured)
            bad += 1
            continue
        route: Route = routes.route(ins)
        if route.is_atomic(ins):
            row.verified = "no: same-ledger (AtomicDvP) trades are not checked yet"
            continue
        checked.append((row, rec, route))
    # every swap of every checked trade, read ledger by ledger: (ledger name, trade id, sender) -> its record
    wanted: dict[str, tuple[Any, list[tuple[bytes, str]]]] = {}
    for _, rec, route in checked:
        ins = rec.signed.instruction
        for side, sender in ((route.st, ins.sellerStAccount), (route.sc, ins.buyerScAccount)):
            wanted.setdefault(side.name, (side, []))[1].append((ins.trade_id_bytes, sender))
    records: dict[tuple[str, bytes, str], dict[str, Any]] = {}
    for name, (side, swaps) in wanted.items():
        for swap, record in zip(swaps, await _swap_records(side, swaps)):
            records[(name, *swap)] = record
    for row, rec, route in checked:
        ins = rec.signed.instruction
        st = records[(route.st.name, ins.trade_id_bytes, ins.sellerStAccount)]
        sc = records[(route.sc.name, ins.trade_id_bytes, ins.buyerScAccount)]
        problems = row.problems
        for name, leg, amount, receiver in (("st", st, ins.stAmount, ins.buyerStAccount),
                                            ("sc", sc, ins.scAmount, ins.sellerScAccount)):
            if leg["claimed"] and leg["lock"] and (leg["lock"]["amount"] != amount
                                                   or leg["lock"]["receiver"] != receiver):
                problems.append(f"{name} claimed with other terms than the instruction's")
            if rec.state in TERMINAL and leg["live"]:
                problems.append(f"{name} swap still locked although the trade is {rec.state.value}")
        claims = int(st["claimed"]) + int(sc["claimed"])
        expected = {TradeState.SETTLED: 2, TradeState.ABORTED: 0, TradeState.REJECTED: 0}.get(rec.state)
        if rec.state is TradeState.ONE_SIDED and claims != 1:
            problems.append(f"ONE_SIDED but the chains show {claims} claims")
        elif expected is not None and claims != expected:
            problems.append(f"{rec.state.value} but the chains show {claims} of 2 swaps claimed")
        row.verified = "yes"
        bad += bool(problems)
    return bad


def daily_totals(rows: list[ReportRow]) -> list[dict[str, Any]]:
    """Per day (UTC, by acceptance), token and counterparty: settled trades and amounts, and trades by outcome."""
    totals: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"trades": 0, "settled": 0, "amount_settled": Decimal(0)})
    for r in rows:
        day = r.accepted_at[:10]
        for token, amount, party, side in ((r.st_token, r.st_amount, r.seller, "seller"),
                                           (r.sc_token, r.sc_amount, r.buyer, "buyer")):
            t = totals[(day, token, side, party)]
            t["trades"] += 1
            if r.state == TradeState.SETTLED.value:
                t["settled"] += 1
                t["amount_settled"] += Decimal(amount)
    return [{"day": d, "token": tok, "side": side, "counterparty": p, **{k: str(v) if isinstance(v, Decimal) else v
                                                                          for k, v in t.items()}}
            for (d, tok, side, p), t in sorted(totals.items())]


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (token symbols come from the tokens' issuers)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render(rows: list[ReportRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"trades": [asdict(r) for r in rows], "daily_totals": daily_totals(rows)}, indent=1)
    out = io.StringIO()
    names = [f for f in ReportRow.__dataclass_fields__]
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in {**asdict(r), "problems": "; ".join(r.problems)}.items()})
    return out.getvalue()
