"""Which ledgers a trade settles on: its instruction names the ST chain (stChainId) and the coin ledger
(scChainId); the route is that pair of followed ledgers and the timing (Δ) of that pair, from each chain's own
block time and confirmations. Any number of ledgers of either role can be followed at once."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.compliance import Transfer
from relayer.config import Settings
from relayer.errors import NotReady, UnknownChain
from relayer.follow import ChainSide
from relayer.protocol.instruction import TradeInstruction
from relayer.protocol.rules import TimingPolicy


@dataclass(frozen=True, eq=False)
class Route:
    """The two ledgers of one trade and their timing."""

    st: ChainSide
    sc: ChainSide
    policy: TimingPolicy

    def side(self, role: str) -> ChainSide:
        return self.st if role == "st" else self.sc

    def is_atomic(self, ins: TradeInstruction) -> bool:
        """Same-ledger fast path: both legs on one chain that has an AtomicDvP, one account per party."""
        return (self.st.ledger.dvp is not None and ins.stChainId == ins.scChainId
                and ins.sellerStAccount == ins.sellerScAccount and ins.buyerStAccount == ins.buyerScAccount)

    def transfers(self, ins: TradeInstruction) -> list[tuple[ChainSide, Transfer]]:
        """Every token movement the trade makes, on the ledger that makes it: seller -> escrow -> buyer for the ST,
        buyer -> escrow -> seller for the SC (or seller -> buyer and buyer -> seller through the AtomicDvP)."""
        if self.is_atomic(ins):
            return [(self.st, Transfer(ins.stToken, ins.sellerStAccount, ins.buyerStAccount, ins.stAmount)),
                    (self.sc, Transfer(ins.scToken, ins.buyerScAccount, ins.sellerScAccount, ins.scAmount))]
        st_escrow, sc_escrow = self.st.ledger.escrow, self.sc.ledger.escrow
        return [(self.st, Transfer(ins.stToken, ins.sellerStAccount, st_escrow, ins.stAmount)),
                (self.st, self.st_claim(ins, locked=False)),
                (self.sc, Transfer(ins.scToken, ins.buyerScAccount, sc_escrow, ins.scAmount)),
                (self.sc, Transfer(ins.scToken, sc_escrow, ins.sellerScAccount, ins.scAmount, funded=False))]

    def st_claim(self, ins: TradeInstruction, locked: bool = True) -> Transfer:
        """The buyer's ST claim: what must still be possible when the seller reveals (`locked`: the escrow holds
        the units by then, so its balance is checked too)."""
        return Transfer(ins.stToken, self.st.ledger.escrow, ins.buyerStAccount, ins.stAmount, funded=locked)


class Routes:
    """The followed ledgers, and the route of each trade by its chain ids (cached per chain-id pair)."""

    def __init__(self, sides: list[ChainSide], settings: Settings) -> None:
        self.sides = sides
        self.settings = settings
        self.by_name = {s.name: s for s in sides}
        self._cache: dict[tuple[int, int], Route] = {}

    def of_role(self, role: str) -> list[ChainSide]:
        return [s for s in self.sides if s.role == role]

    def route(self, ins: TradeInstruction) -> Route:
        """The route of an accepted trade; UnknownChain when a chain id is not followed in its role (the ledger
        left the configuration). A ledger whose chain id is not configured and that has not answered yet (it is
        down) is the route of its role when it is the only one: intake checked the id against it."""
        return self._route(ins, strict=False)

    def admit(self, ins: TradeInstruction) -> Route:
        """The route of a new instruction: as route(), but NotReady while a ledger whose chain id is not
        configured has not answered yet (it might be the one, or not: nothing is refused unchecked)."""
        return self._route(ins, strict=True)

    def _route(self, ins: TradeInstruction, strict: bool) -> Route:
        key = (ins.stChainId, ins.scChainId)
        found = self._cache.get(key)
        if found is not None:
            return found
        (st, st_known), (sc, sc_known) = self._find("st", ins.stChainId, strict), self._find("sc", ins.scChainId, strict)
        found = Route(st, sc, self.settings.timing(st.config, sc.config))
        if st_known and sc_known:
            self._cache[key] = found
        return found

    def pairs(self) -> list[Route]:
        """Every route a trade could take between the ledgers whose chain ids are known."""
        return [self.route_of(st, sc) for st in self.of_role("st") for sc in self.of_role("sc")
                if st.chain_id is not None and sc.chain_id is not None]

    def route_of(self, st: ChainSide, sc: ChainSide) -> Route:
        assert st.chain_id is not None and sc.chain_id is not None
        key = (st.chain_id, sc.chain_id)
        if key not in self._cache:
            self._cache[key] = Route(st, sc, self.settings.timing(st.config, sc.config))
        return self._cache[key]

    def _find(self, role: str, chain_id: int, strict: bool) -> tuple[ChainSide, bool]:
        """The ledger of this role and chain id, and whether its chain id is known (not assumed)."""
        candidates = self.of_role(role)
        for side in candidates:
            if side.chain_id == chain_id:
                return side, True
        what = "ST chain" if role == "st" else "coin ledger (SC chain)"
        unknown = [s for s in candidates if s.chain_id is None]
        if unknown and not strict and len(candidates) == 1:
            return unknown[0], False  # the only one of its role, down since start: its trades still need us
        if unknown:  # not connected yet (the chain is down): we cannot judge, so do not refuse
            raise NotReady(f"the {what} {unknown[0].name} has not answered yet; retry shortly")
        raise UnknownChain(f"unknown {what} id {chain_id}")
