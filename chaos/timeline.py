"""What the chaos run injected and when, and whether a ONE-SIDED trade lies beyond what Δ guarantees.

Δ = k × block time + inclusion delay + clock skew + margin. The margin is the part of Δ reserved for outages:
once the secret is public, the party that still has to claim gets at least Δ, so an outage of up to `margin`
seconds still leaves it `Δ − margin` seconds to see the secret and get its claim mined. A ONE-SIDED trade is
therefore *beyond the HTLC guarantee* only when the injected outages inside its claim window left less than
`Δ − margin` seconds in which the relayer, Redis and the chain of the unclaimed leg were all up. The window opens
when the relayer could read the secret: at the reveal block, or — when the revealing chain, the worker or Redis
was down within k block times of it — once all were up together for that long. Every other
ONE-SIDED trade is a violation. The outages are the injected intervals themselves (ground truth, wall clock),
not what the relayer reported, so a relayer that is slow to recover after an outage is not excused by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BEYOND_GUARANTEE = "ONE-SIDED (outages in claim window > margin)"
# the other cases beyond the guarantee, each printed with its evidence: the issuer's agent blocked the ST claim
# after the reveal (issue 16: the one case compliance-aware atomicity cannot prevent), or a reorg deeper than the
# confirmation depth Δ is built on happened while the trade was open
ISSUER_ACTED = "ONE-SIDED (issuer acted after the reveal)"
DEEP_REORG = "ONE-SIDED (reorg deeper than k)"


@dataclass
class Outage:
    what: str  # "worker", "redis", "<ledger> chain" ("st chain", "st2 chain", "sc chain"), "st issuer"
    start: float  # wall clock
    end: float


@dataclass
class ClockLog:
    """Chain time = wall time + the offset the runner set (evm_setTime), per chain, as it changed."""

    changes: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # chain -> (wall, offset) as set

    def set(self, chain: str, wall: float, offset: int) -> None:
        self.changes.setdefault(chain, [(0.0, 0)]).append((wall, offset))

    def to_wall(self, chain: str, chain_time: int) -> float:
        """The wall time at which `chain`'s clock showed `chain_time` (offsets are a few seconds at most)."""
        wall = float(chain_time)
        for _ in range(2):  # the offset in force depends on the wall time we are solving for
            offset = max((c for c in self.changes.get(chain, ()) if c[0] <= wall), default=(0.0, 0))[1]
            wall = chain_time - offset
        return wall


def down_seconds(outages: list[Outage], start: float, end: float, what: set[str]) -> float:
    """Seconds of [start, end] covered by at least one outage of a kind in `what` (overlaps counted once)."""
    spans = sorted((max(o.start, start), min(o.end, end)) for o in outages
                   if o.what in what and o.start < end and o.end > start)
    total, reach = 0.0, start
    for s, e in spans:
        if e <= reach:
            continue
        total += e - max(s, reach)
        reach = e
    return total


@dataclass
class ClaimWindow:
    """For a ONE-SIDED trade: the leg left unclaimed, and the wall-clock window its claim had."""

    unclaimed: str  # the ledger of the missing claim: an ST platform ("st", "st2": the buyer's) or "sc" (the seller's)
    start: float  # the other leg's claim was mined (the secret became public)
    end: float  # the unclaimed leg's timelock
    down: float  # seconds of the window with the relayer, Redis or that chain down
    budget: float  # Δ − margin

    @property
    def up(self) -> float:
        return (self.end - self.start) - self.down

    @property
    def beyond_guarantee(self) -> bool:
        return self.up < self.budget

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"up": round(self.up, 2), "beyond_guarantee": self.beyond_guarantee}


def observable_from(revealed: float, chain: str, outages: list[Outage], observe: float) -> float:
    """When the relayer could first read the secret: the revealing chain, the worker and Redis all up for
    `observe` seconds (Δ's k × block time term) from then on. A node stopped right after mining the reveal, or a
    relayer down until the node stops, shows it to nobody until both are back."""
    t = revealed
    watch = {f"{chain} chain", "worker", "redis"}
    while True:
        cut = [o.end for o in outages if o.what in watch and o.start < t + observe and o.end > t]
        if not cut:
            return t
        t = max(cut)


def claim_window(unclaimed: str, revealed_chain_time: int, revealed_on: str, timelock: int, clocks: ClockLog,
                 outages: list[Outage], budget: float, observe: float = 0.0,
                 also: frozenset[str] = frozenset()) -> ClaimWindow:
    """`also`: further outage kinds that kept the claim from going through (e.g. "st issuer": an agent action)."""
    start = observable_from(clocks.to_wall(revealed_on, revealed_chain_time), revealed_on, outages, observe)
    end = clocks.to_wall(unclaimed, timelock)
    down = down_seconds(outages, start, end, {"worker", "redis", f"{unclaimed} chain", *also})
    return ClaimWindow(unclaimed, start, end, down, budget)
