"""The reveal (the seller's SC claim) and the 3Δ locking rule, as pure functions: examples and Hypothesis properties.

Issue 13: decide() let the seller reveal whenever now + inclusion delay < T_sc, so a buyer who locked the right terms
late and congested the coin ledger kept the claim in the mempool past T_sc (the secret public, the seller
one-sided); and the buyer locked with 2Δ left on T_st where the docs said 3Δ.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relayer.protocol.rules import (
    Action,
    LegView,
    Roles,
    TradeView,
    check_sc_lock,
    check_st_lock,
    choose_lock,
    decide,
)
from tests.test_protocol import BUYER_ONLY, H, NOW, POLICY, SELLER_ONLY, T_ST, instruction, sc_lock, st_lock, view

DELTA = POLICY.delta()


def test_the_seller_reveals_with_delta_left_before_t_sc_and_not_a_second_less():
    t_sc = T_ST - DELTA
    ok = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - DELTA)
    assert Action.CLAIM_SC in decide(ok, SELLER_ONLY, POLICY).actions
    late = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - DELTA + 1)
    d = decide(late, SELLER_ONLY, POLICY)
    assert Action.CLAIM_SC not in d.actions and any("too late to reveal" in n for n in d.notes)
    # the note is the same every round (the audit trail records it once), whatever the seconds left
    later = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - 2), SELLER_ONLY, POLICY)
    assert [n for n in d.notes if "too late" in n] == [n for n in later.notes if "too late" in n]


def test_a_secret_already_out_is_used_to_collect_the_sc_whatever_the_time_left():
    """Our claim was seen on chain (then maybe reorged away): withholding it protects nothing; collect the SC."""
    t_sc = T_ST - DELTA
    out = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - 2, revealed=True)
    assert Action.CLAIM_SC in decide(out, SELLER_ONLY, POLICY).actions
    seen = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - 2, seen_preimage=b"s")
    assert Action.CLAIM_SC in decide(seen, SELLER_ONLY, POLICY).actions


def test_no_reveal_while_the_chain_clocks_differ_beyond_the_bound():
    t_sc = T_ST - DELTA
    v = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=t_sc - 2 * DELTA,
             clock_offset=POLICY.max_clock_skew + 1)
    assert Action.CLAIM_SC not in decide(v, SELLER_ONLY, POLICY).actions


def test_the_buyer_locks_with_3_delta_left_on_t_st_and_not_a_second_less():
    ok = view(st=LegView(lock=st_lock()), now=T_ST - 3 * DELTA, our_hashlock=None)
    assert Action.LOCK_SC in decide(ok, BUYER_ONLY, POLICY).actions
    short = view(st=LegView(lock=st_lock()), now=T_ST - 3 * DELTA + 1, our_hashlock=None)
    d = decide(short, BUYER_ONLY, POLICY)
    assert Action.LOCK_SC not in d.actions and any("3Δ" in n for n in d.notes)


def test_the_first_lock_with_acceptable_terms_is_followed_else_the_latest():
    wrong, right, again = (LegView(lock=sc_lock(amount=1), refunded=True), LegView(lock=sc_lock()),
                           LegView(lock=sc_lock()))
    problems = lambda lock: check_sc_lock(instruction(), lock, H, T_ST, DELTA)  # noqa: E731
    assert choose_lock([wrong, right, again], problems) == 1
    assert choose_lock([wrong], problems) == 0  # only wrong terms: the latest, refunded at its timelock
    assert choose_lock([], problems) is None


# -- properties over every view

ROLES = st.builds(Roles, seller=st.booleans(), buyer=st.booleans(), st_gas=st.booleans(), sc_gas=st.booleans())
# mostly clocks within the bound (where the rules act), sometimes far apart
OFFSETS = st.one_of(st.sampled_from([0, 0, 1, -1, 2, -2]), st.integers(-3 * DELTA, 3 * DELTA))
ENDS = st.sampled_from(["live", "live", "live", "claimed", "refunded"])


def _leg(lock, ended) -> LegView:
    return LegView(lock=lock, claimed=ended == "claimed", refunded=ended == "refunded",
                   preimage=b"s" if ended == "claimed" else None)


@st.composite
def views(draw):
    """Timelocks drawn around the moments that matter: T_st a few Δ from now, T_sc near T_st - Δ."""
    now_sc = NOW
    now_st = now_sc + draw(OFFSETS)
    t_st = now_st + draw(st.integers(-5, 4 * DELTA))
    t_sc = t_st - DELTA - draw(st.one_of(st.integers(0, 2 * DELTA), st.integers(-3, 0)))
    st_leg = LegView() if draw(st.integers(0, 5)) == 0 else _leg(
        st_lock(timelock=t_st, **draw(st.sampled_from([{}] * 5 + [dict(amount=9)]))), draw(ENDS))
    sc_leg = LegView() if draw(st.integers(0, 3)) == 0 else _leg(
        sc_lock(timelock=t_sc, **draw(st.sampled_from([{}] * 5 + [dict(amount=999), dict(hashlock=b"\x01" * 32)]))),
        draw(ENDS))
    return view(st=st_leg, sc=sc_leg, now=now_sc, now_st=now_st, clock_offset=now_st - now_sc,
                head_st=now_st - draw(st.integers(0, 3)), head_sc=now_sc - draw(st.integers(0, 3)),
                st_fresh=draw(st.integers(0, 4)) > 0, sc_fresh=draw(st.integers(0, 4)) > 0,
                revealed=draw(st.integers(0, 4)) == 0, seen_preimage=draw(st.sampled_from([None, None, None, b"s"])),
                planned_t_st=draw(st.sampled_from([None, t_st])))


def _secret_was_out(v: TradeView) -> bool:
    return bool(v.revealed or v.seen_preimage or v.sc.preimage or v.st.preimage or v.st.claimed)


@settings(max_examples=1500, deadline=None)
@given(views(), ROLES)
def test_the_seller_never_reveals_without_delta_left_or_while_the_st_claim_could_not_follow(v: TradeView, roles):
    d = decide(v, roles, POLICY)
    if Action.CLAIM_SC not in d.actions or _secret_was_out(v):
        return
    ins = v.instruction
    assert v.sc.lock is not None and v.st.lock is not None
    assert v.sc.lock.timelock - v.now_sc >= POLICY.reveal_window()  # at least Δ before T_sc
    assert v.st_fresh and v.sc_fresh  # both chains answer
    assert abs(v.clock_offset) <= POLICY.max_clock_skew
    assert v.st.active and not check_st_lock(ins, v.st.lock) and v.head_st < v.st.lock.timelock  # the ST is claimable
    assert not check_sc_lock(ins, v.sc.lock, v.st.lock.hashlock, v.st.lock.timelock, DELTA)
    # so the ST claim that follows has Δ past T_sc, on its own chain's clock: 2Δ minus the clocks' difference
    assert v.st.lock.timelock - v.now_st >= 2 * DELTA - POLICY.max_clock_skew


@settings(max_examples=1000, deadline=None)
@given(views(), ROLES)
def test_nobody_locks_with_less_than_3_delta_left_on_t_st(v: TradeView, roles):
    d = decide(v, roles, POLICY)
    if Action.LOCK_SC in d.actions:
        assert v.st.lock is not None and v.st.lock.timelock - v.now_sc >= 3 * DELTA
    if Action.LOCK_ST in d.actions:
        assert v.planned_t_st is not None and v.planned_t_st - v.now_st >= 3 * DELTA


@settings(max_examples=1000, deadline=None)
@given(views(), ROLES)
def test_no_claim_is_ever_made_against_wrong_terms(v: TradeView, roles):
    d = decide(v, roles, POLICY)
    ins = v.instruction
    if Action.CLAIM_ST in d.actions:
        assert v.st.lock is not None and not check_st_lock(ins, v.st.lock)
    if Action.CLAIM_SC in d.actions:
        assert v.sc.lock is not None
        hashlock = v.st.lock.hashlock if v.st.lock else v.our_hashlock
        t_st = v.st.lock.timelock if v.st.lock else v.planned_t_st
        assert not check_sc_lock(ins, v.sc.lock, hashlock, t_st, DELTA)
