"""Routing of a trade to its ledgers by chain id (relayer/routing.py), against fake ledgers: no chains."""

from __future__ import annotations

import pytest

from relayer.config import Settings
from relayer.errors import NotReady, UnknownChain
from relayer.routing import Routes
from tests.fakes import FakeLedger, side
from tests.test_protocol import instruction

SETTINGS = Settings(_env_file=None, confirmations=1, block_time=1.0)  # type: ignore[call-arg]


def _sides(*specs):
    out = []
    for name, role, chain_id in specs:
        s = side(name, FakeLedger(name, "0x" + "e1" * 20, []), 0, chain_id=chain_id or 1, role=role)
        if chain_id is None:  # a ledger without a configured chain id that has not answered yet
            s.ledger.chain.chain_id = None
            s.config = s.config.model_copy(update={"chain_id": None})
        out.append(s)
    return out


def test_each_trade_goes_to_the_ledgers_its_chain_ids_name_in_their_roles():
    routes = Routes(_sides(("st", "st", 1), ("st2", "st", 3), ("sc", "sc", 2)), SETTINGS)
    assert (routes.route(instruction(stChainId=3, scChainId=2)).st.name, routes.route(instruction()).st.name) == (
        "st2", "st")
    assert routes.route(instruction()) is routes.route(instruction())  # cached per chain-id pair
    for bad in (dict(stChainId=2), dict(scChainId=1), dict(stChainId=99)):
        with pytest.raises(UnknownChain):
            routes.admit(instruction(**bad))
        with pytest.raises(UnknownChain):
            routes.route(instruction(**bad))
    assert len(routes.pairs()) == 2


def test_a_ledger_not_answered_yet_delays_admission_but_not_the_trades_already_accepted():
    """Found by the failure-path tests: a worker restarted while the coin ledger (no chain id configured) was down
    quarantined every trade for want of a route, and the ST claim from the kept secret never went out."""
    routes = Routes(_sides(("st", "st", 1), ("sc", "sc", None)), SETTINGS)
    with pytest.raises(NotReady):
        routes.admit(instruction())
    assert routes.route(instruction()).sc.name == "sc"  # the only coin ledger: the trade's, as intake checked
    assert routes.pairs() == []  # no clock offset to compare until it answers
