"""Admission: every check a signed instruction must pass before anything is written, then the write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from adapters.compliance import Transfer, TransferRules
from adapters.errors import LedgerError
from relayer.config import Settings
from relayer.errors import ComplianceRefused, InvalidInstruction, NotReady, RelayerError
from relayer.leases import ACTOR
from relayer.logging import get_logger
from relayer.protocol.instruction import SignedInstruction, TradeInstruction
from relayer.routing import Route, Routes
from relayer.together import Together
from relayer.store import Store


TOGETHER_MAX = 500  # single submissions admitted in one accept_many call at most


class Intake:
    """Validates signed instructions against this firm's chains, tokens and PTS keys, and stores new ones."""

    def __init__(self, routes: Routes, settings: Settings, store: Store, ready: Callable[[], bool],
                 gate: Callable[[], Awaitable[None]] | None = None) -> None:
        self.routes = routes
        self.gate = gate  # raises IntakePaused while an operator paused intake (OperatorDesk.check_intake_open)
        self.settings = settings
        self.store = store
        self.ready = ready  # the engine has connected (a chain and Redis answered once)
        self.trusted = settings.trusted_signers()
        # joined per chain pair: a chain that hangs holds up only its own trades' admission
        self._together: dict[tuple[int, int] | None, Together] = {}
        self.domain_salt = settings.domain_salt()
        self.tokens = {side.name: side.config.token_set() for side in routes.sides}  # ledger name -> its tokens
        self.log = get_logger()

    async def validate(self, signed: SignedInstruction, clocks: dict[str, int] | None = None) -> Route:
        """Every check but the tokens' own rules (see refusals); returns the trade's route. Raises
        InvalidInstruction (refused: the caller's mistake) or NotReady (retry shortly). `clocks`: ST chain clocks
        by ledger name already read (bulk intake reads each once)."""
        ins = signed.instruction
        if not self.ready():
            raise NotReady("the worker is still connecting to its chains and Redis; retry shortly")
        signer = signed.signer(self.domain_salt)
        if signer not in self.trusted:
            raise InvalidInstruction(f"signer {signer} is not a trusted PTS key", code="untrusted_signer")
        route = self.routes.admit(ins)  # UnknownChain, or NotReady while a chain has not answered
        if ins.stToken not in self.tokens[route.st.name]:
            raise InvalidInstruction(f"unknown ST token {ins.stToken} on {route.st.name}", code="unknown_token")
        if ins.scToken not in self.tokens[route.sc.name]:
            raise InvalidInstruction(f"unknown SC token {ins.scToken} on {route.sc.name}", code="unknown_token")
        down = NotReady(f"the ST chain {route.st.name} does not answer; retry shortly")
        if clocks is not None and route.st.name in clocks:
            now = clocks[route.st.name]
            if now < 0:
                raise down  # asked once already in this bulk request
        else:
            try:
                now = await route.st.ledger.chain.now()
            except LedgerError:  # this instruction's chain is down: retry it later; the others are judged
                if clocks is not None:
                    clocks[route.st.name] = -1
                raise down from None
            if clocks is not None:
                clocks[route.st.name] = now
        window = route.policy.min_st_window()
        if ins.deadline - now < window:
            raise InvalidInstruction(f"deadline {ins.deadline} leaves less than {window}s", code="deadline_too_close")
        return route

    async def refusals(self, routed: list[tuple[TradeInstruction, Route]]) -> list[RelayerError | None]:
        """Would each token make every transfer its trade needs, now? One batched read per chain for all the
        instructions: ComplianceRefused naming the transfer and the token's reason, NotReady when that chain did
        not answer, None when every transfer is allowed (or DVP_COMPLIANCE_CHECKS is off)."""
        out: list[RelayerError | None] = [None] * len(routed)
        if not self.settings.compliance_checks:
            return out
        by_chain: dict[int, tuple[TransferRules, list[tuple[int, Transfer]]]] = {}
        for i, (ins, route) in enumerate(routed):
            for side, transfer in route.transfers(ins):
                by_chain.setdefault(id(side.ledger.rules), (side.ledger.rules, []))[1].append((i, transfer))
        for rules, items in by_chain.values():
            try:
                reasons = await rules.refusals([t for _, t in items])
            except LedgerError:
                for i, _ in items:
                    out[i] = out[i] or NotReady(f"{rules.chain.name} did not answer the compliance check; retry "
                                                "shortly")
                continue
            for (i, t), reason in zip(items, reasons):
                if reason is not None and not isinstance(out[i], ComplianceRefused):
                    out[i] = ComplianceRefused(
                        f"the token {t.token} on {rules.chain.name} would refuse {t.sender} -> {t.receiver} of "
                        f"{t.amount}: {reason}", code="compliance_refused")
        return out

    async def check(self, signed: SignedInstruction) -> Route:
        """validate() and the tokens' rules: every check intake makes, nothing written."""
        if self.gate is not None:
            await self.gate()
        route = await self.validate(signed)
        if (err := (await self.refusals([(signed.instruction, route)]))[0]) is not None:
            raise err
        return route

    async def accept_many(self, signed: list[SignedInstruction]) -> list[bool | RelayerError]:
        """Bulk intake: each instruction validated on its own (one refused never refuses the others), the valid
        ones written in one pipelined round trip. Per instruction: True (new), False (known), or the error."""
        if not self.ready():
            raise NotReady("the worker is still connecting to its chains and Redis; retry shortly")
        if self.gate is not None:
            await self.gate()
        clocks: dict[str, int] = {}
        checked: list[RelayerError | None] = []
        routed: list[tuple[int, TradeInstruction, Route]] = []
        for n, s in enumerate(signed):
            try:
                routed.append((n, s.instruction, await self.validate(s, clocks)))
                checked.append(None)
            except (InvalidInstruction, NotReady) as exc:  # one refused or not judged yet: the others go on
                checked.append(exc)
        for (n, _, _), err in zip(routed, await self.refusals([(ins, r) for _, ins, r in routed])):
            checked[n] = err
        await self._answer_taken_ids(signed, checked)
        valid = [s for s, err in zip(signed, checked) if err is None]
        stored = iter(await self.store.create_many(valid, ACTOR))
        out: list[bool | RelayerError] = [err if err is not None else next(stored) for err in checked]
        created = sum(1 for r in out if r is True)
        if created:
            self.log.info("trades_accepted", count=created, refused=sum(1 for r in out if isinstance(r, Exception)))
        return out

    async def _answer_taken_ids(self, signed: list[SignedInstruction], checked: list[RelayerError | None]) -> None:
        """A resent instruction is answered for its trade id (202 the same, 409 other terms), not refused by
        what the token or the clock say now (an agent's pause after intake, a deadline now close): its refusal
        is dropped when the id is taken, and create_many, which never writes over a taken id, answers it."""
        late = [n for n, err in enumerate(checked) if isinstance(err, ComplianceRefused)
                or (isinstance(err, InvalidInstruction) and err.code == "deadline_too_close")]
        if not late:
            return
        taken = await self.store.existing([signed[n].instruction.tradeId for n in late])
        for n in late:
            if signed[n].instruction.tradeId in taken:
                checked[n] = None

    async def accept(self, signed: SignedInstruction) -> bool:
        """Validate and store. True if new, False if the same instruction was already accepted. Submissions that
        arrive together are admitted together (accept_many: one clock read, one batched token-rules read per
        chain, one pipelined write); each is answered, or refused, on its own."""
        ins = signed.instruction
        pair = (ins.stChainId, ins.scChainId)
        known = {side.chain_id for side in self.routes.sides}
        key = pair if pair[0] in known and pair[1] in known else None  # an unknown chain is refused at once
        together = self._together.get(key)
        if together is None:
            together = self._together[key] = Together(self.accept_many, most=TOGETHER_MAX)
        result: bool = await together.submit(signed)
        return result
