"""The chaos checker on three ledgers: each trade is judged on the ST platform and coin ledger its instruction names
(stChainId / scChainId), never on another platform's events under the same trade id. Fakes, no chains."""

from __future__ import annotations

from adapters.contracts import swap_id
from chaos.checker import ChainLogs, classify_all

SELLER = "0x" + "11" * 20
BUYER = "0x" + "22" * 20
TOKEN_ST, TOKEN_SC = "0x" + "aa" * 20, "0x" + "bb" * 20
ST, ST2, SC = 18101, 18103, 18102
DELTA = 12


def _instruction(trade: bytes, st_chain: int) -> dict:
    return {"tradeId": "0x" + trade.hex(), "stChainId": st_chain, "scChainId": SC, "stToken": TOKEN_ST,
            "scToken": TOKEN_SC, "stAmount": 5, "scAmount": 100, "sellerStAccount": SELLER, "sellerScAccount": SELLER,
            "buyerScAccount": BUYER, "buyerStAccount": BUYER}


def _locked(logs: ChainLogs, trade: bytes, sender: str, token: str, amount: int, receiver: str, timelock: int) -> None:
    logs.locks[(trade, sender)] = {"tradeId": trade, "sender": sender, "token": token, "amount": amount,
                                   "receiver": receiver, "hashlock": b"h" * 32, "timelock": timelock}


def _settled_on(st_logs: ChainLogs, sc: ChainLogs, trade: bytes) -> None:
    _locked(st_logs, trade, SELLER, TOKEN_ST, 5, BUYER, 1_000)
    _locked(sc, trade, BUYER, TOKEN_SC, 100, SELLER, 1_000 - DELTA)
    st_logs.claimed[swap_id(SELLER, trade)] = 7
    sc.claimed[swap_id(BUYER, trade)] = 5


def test_each_trade_is_judged_on_the_st_platform_its_instruction_names():
    st, st2, sc = ChainLogs(now=500), ChainLogs(now=500), ChainLogs(now=500)
    on_st2, on_st = b"\x02" * 32, b"\x01" * 32
    _settled_on(st2, sc, on_st2)
    _settled_on(st, sc, on_st)
    out = classify_all([_instruction(on_st2, ST2), _instruction(on_st, ST)], {ST: st, ST2: st2, SC: sc}, DELTA)
    assert out == {"0x" + on_st2.hex(): "SETTLED", "0x" + on_st.hex(): "SETTLED"}


def test_an_st_claim_on_another_platform_does_not_settle_the_trade():
    # the coin leg was claimed; the only ST claim under this trade id is on the platform the trade does not name
    st, st2, sc = ChainLogs(now=2_000), ChainLogs(now=2_000), ChainLogs(now=2_000)
    trade = b"\x03" * 32
    _settled_on(st, sc, trade)
    _locked(st2, trade, SELLER, TOKEN_ST, 5, BUYER, 1_000)  # the named platform: locked, never claimed
    st2.refunded.add(swap_id(SELLER, trade))
    assert classify_all([_instruction(trade, ST2)], {ST: st, ST2: st2, SC: sc}, DELTA) == {
        "0x" + trade.hex(): "ONE-SIDED"}
    assert classify_all([_instruction(trade, ST)], {ST: st, ST2: st2, SC: sc}, DELTA) == {
        "0x" + trade.hex(): "SETTLED"}


def test_a_lock_the_logs_leave_open_but_the_escrow_no_longer_holds_is_set_apart_not_stuck():
    """Chaos seed 7 (20 rounds): anvil's logs showed the relayer's SC lock of a trade with no Claimed/Refunded
    event, past its timelock (STUCK), while the escrow's slot for that swap was empty and its token balance
    equalled the sum of the live slots: the chain's logs and state disagreed (block 1719 missing from its
    history, block 1720's effects missing from its state). Nothing is locked: set apart, not STUCK."""
    st, st2, sc = ChainLogs(now=2_000), ChainLogs(now=2_000), ChainLogs(now=2_000)
    trade = b"\x04" * 32
    _locked(st, trade, SELLER, TOKEN_ST, 5, BUYER, 1_000)
    st.refunded.add(swap_id(SELLER, trade))
    _locked(sc, trade, BUYER, TOKEN_SC, 100, SELLER, 1_000 - DELTA)  # no end event on the coin ledger
    tid = "0x" + trade.hex()
    assert classify_all([_instruction(trade, ST)], {ST: st, ST2: st2, SC: sc}, DELTA) == {tid: "STUCK"}
    sc.gone.add(swap_id(BUYER, trade))  # ... and its slot is empty
    assert classify_all([_instruction(trade, ST)], {ST: st, ST2: st2, SC: sc}, DELTA) == {tid: "LOCK-GONE-WITHOUT-EVENT"}
