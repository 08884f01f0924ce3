"""The words the driver, the executor and the janitor share: an action found due, one prepared call.

The driver finds what is due for a trade (`Due`), the janitor finds refunds due for strays, the executor turns
both into transactions (`Prepared`, then one call or one batch). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.evm import TxSender
from adapters.htlc import HtlcLedger, LockedEvent
from relayer.protocol.instruction import TradeInstruction
from relayer.protocol.rules import Action, TradeView
from relayer.store import TradeRecord


def dvp_terms(ins: TradeInstruction) -> tuple[Any, ...]:
    """AtomicDvP terms of a same-ledger trade: (tradeId, seller, buyer, stToken, stAmount, scToken, scAmount,
    deadline)."""
    return (ins.trade_id_bytes, ins.sellerStAccount, ins.buyerScAccount, ins.stToken, ins.stAmount, ins.scToken,
            ins.scAmount, ins.deadline)


class NeedsAccount(Exception):
    """An action needs the signature of an account whose lease another worker holds: route it there."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.account = account


DueKey = tuple[str, Action, bytes]


@dataclass
class Due:
    """One action found due for one trade this round."""

    rec: TradeRecord
    action: Action
    view: TradeView | None  # None for actions that need no view of the legs (same-ledger settle, stray refunds)
    st_ev: LockedEvent | None
    sc_ev: LockedEvent | None
    observed_at: float = 0.0  # monotonic time the round finished reading both chains
    chain: str = ""  # the ledger the lock is on when it is not one of the trade's own (a stray found elsewhere)
    # a claim made again after a reorg deeper than k took it out (the janitor): the secret it had revealed, and
    # whether it is public still (the trade's ST claim stands), in which case no reveal gate applies
    preimage: bytes | None = None
    revealed: bool = False

    @property
    def lock(self) -> LockedEvent | None:
        """The lock a claim or refund acts on (None for locks and settlements)."""
        if self.action in (Action.CLAIM_SC, Action.REFUND_SC):
            return self.sc_ev
        if self.action in (Action.CLAIM_ST, Action.REFUND_ST):
            return self.st_ev
        return None

    @property
    def key(self) -> DueKey:
        """One in-flight action per trade, kind and lock: a trade's stray locks are refunded beside its own legs."""
        lock = self.lock
        return (self.rec.trade_id, self.action, lock.terms_hash if lock is not None else b"")

    @property
    def kind(self) -> str:
        """lock | claim | refund | settle"""
        return self.action.value.split("_")[0]


@dataclass
class Prepared:
    """A due action checked against the chain and ready to encode, alone or in a batch."""

    due: Due
    ledger: HtlcLedger
    via: TxSender
    entry: tuple[Any, ...]  # the swap's entry in the batch call (the single call takes the same values)
    sort_key: tuple[str, ...] = ()
    expires: int | None = None  # the chain time after which the call cannot succeed (a timelock, a deadline)
    to: str = ""  # contract called (the escrow unless set)
    data: str = ""  # the call's own calldata when it has no batch form (a holder-signed lock: lockWithSig)

    @property
    def target(self) -> str:
        return self.to or self.ledger.escrow

    @property
    def gas(self) -> int | None:
        """The gas limit of the single call (None: estimate it), by the tokens it moves."""
        if self.data:
            return None  # a signature check and maybe a permit: estimated
        ins = self.due.rec.signed.instruction
        tokens = self.sort_key[:1] if self.sort_key else (ins.stToken, ins.scToken)
        return self.ledger.gas_for(self.due.kind, tokens)

    @property
    def single(self) -> str:
        """Calldata of this swap's call on its own."""
        return self.data or self.ledger.single_call(self.due.kind, self.entry)
