"""Admission: every check a signed instruction must pass before anything is written, then the write."""

from __future__ import annotations

from collections.abc import Callable

from relayer.config import Settings
from relayer.errors import InvalidInstruction, NotReady, RelayerError
from relayer.follow import ChainSide
from relayer.leases import ACTOR
from relayer.logging import get_logger
from relayer.protocol.instruction import SignedInstruction
from relayer.protocol.rules import TimingPolicy
from relayer.protocol.states import TradeState
from relayer.store import Store


class Intake:
    """Validates signed instructions against this firm's chains, tokens and PTS keys, and stores new ones."""

    def __init__(self, st: ChainSide, sc: ChainSide, settings: Settings, store: Store, policy: TimingPolicy,
                 ready: Callable[[], bool]) -> None:
        self.st, self.sc = st, sc
        self.settings = settings
        self.store = store
        self.policy = policy
        self.ready = ready  # the engine has connected (a chain and Redis answered once)
        self.trusted = settings.trusted_signers()
        self.domain_salt = settings.domain_salt()
        self.st_tokens = settings.st_token_set()
        self.sc_tokens = settings.sc_token_set()
        self.log = get_logger()

    async def validate(self, signed: SignedInstruction, now: int | None = None) -> None:
        """Raises InvalidInstruction (refused: the caller's mistake) or NotReady (retry shortly). `now`: the ST
        chain's clock, when the caller read it already (bulk intake reads it once)."""
        ins = signed.instruction
        if not self.ready():
            raise NotReady("the worker is still connecting to its chains and Redis; retry shortly")
        signer = signed.signer(self.domain_salt)
        if signer not in self.trusted:
            raise InvalidInstruction(f"signer {signer} is not a trusted PTS key", code="untrusted_signer")
        for side, chain_id, configured in ((self.st, ins.stChainId, self.settings.st_chain_id),
                                           (self.sc, ins.scChainId, self.settings.sc_chain_id)):
            ours = side.ledger.chain.chain_id or configured
            if ours is None:  # not connected yet (the chain is down): we cannot judge, so do not refuse
                raise NotReady(f"the {side.name} chain has not answered yet; retry shortly")
            if chain_id != ours:
                raise InvalidInstruction(f"unknown {side.name.upper()} chain id {chain_id}", code="unknown_chain")
        if ins.stToken not in self.st_tokens:
            raise InvalidInstruction(f"unknown ST token {ins.stToken}", code="unknown_token")
        if ins.scToken not in self.sc_tokens:
            raise InvalidInstruction(f"unknown SC token {ins.scToken}", code="unknown_token")
        if now is None:
            now = await self.st.ledger.chain.now()
        if ins.deadline - now < self.policy.min_st_window():
            raise InvalidInstruction(
                f"deadline {ins.deadline} leaves less than {self.policy.min_st_window()}s",
                code="deadline_too_close",
            )

    async def accept_many(self, signed: list[SignedInstruction]) -> list[bool | RelayerError]:
        """Bulk intake: each instruction validated on its own (one refused never refuses the others), the valid
        ones written in one pipelined round trip. Per instruction: True (new), False (known), or the error."""
        if not self.ready():
            raise NotReady("the worker is still connecting to its chains and Redis; retry shortly")
        now = await self.st.ledger.chain.now()
        checked: list[RelayerError | None] = []
        for s in signed:
            try:
                await self.validate(s, now)
                checked.append(None)
            except InvalidInstruction as exc:
                checked.append(exc)
        valid = [s for s, err in zip(signed, checked) if err is None]
        stored = iter(await self.store.create_many(valid, ACTOR))
        out: list[bool | RelayerError] = [err if err is not None else next(stored) for err in checked]
        created = sum(1 for r in out if r is True)
        if created:
            self.log.info("trades_accepted", count=created, refused=sum(1 for r in out if isinstance(r, Exception)))
        return out

    async def accept(self, signed: SignedInstruction) -> bool:
        """Validate and store. True if new, False if the same instruction was already accepted."""
        await self.validate(signed)
        created = await self.store.create(signed, TradeState.MATCHED, ACTOR)
        if created:
            await self.store.enqueue_intake(signed.instruction.tradeId)
            self.log.info("trade_accepted", trade_id=signed.instruction.tradeId)
        return created
