"""Pure protocol rules: instruction signatures, the state machine and decide(). No I/O."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak

from relayer.errors import InvalidInstruction
from relayer.protocol.instruction import SignedInstruction, TradeInstruction, parse_signed, sign_instruction
from relayer.protocol.rules import Action, LegView, ObservedLock, Roles, TimingPolicy, TradeView, decide
from relayer.protocol.states import ALLOWED, TERMINAL, TradeState, can_transition

PTS = Account.create()
SELLER, BUYER = Account.create().address, Account.create().address
ST_TOKEN, SC_TOKEN = Account.create().address, Account.create().address
POLICY = TimingPolicy(confirmations=1, block_time=1, inclusion_delay=2, max_clock_skew=2, margin=3,
                      st_lock_duration=300)
NOW = 1_800_000_000
SALT = bytes.fromhex("5e" * 32)  # this deployment's instruction domain


def instruction(**over) -> TradeInstruction:
    fields = dict(tradeId="0x" + "ab" * 32, stChainId=1, stToken=ST_TOKEN, stAmount=10, scChainId=2,
                  scToken=SC_TOKEN, scAmount=1000, sellerStAccount=SELLER, sellerScAccount=SELLER,
                  buyerScAccount=BUYER, buyerStAccount=BUYER, deadline=NOW + 3600)
    fields.update(over)
    return TradeInstruction(**fields)


def _independent_digest(ins: TradeInstruction) -> bytes:
    """EIP-712 digest computed by hand from the spec in docs/trade-instruction.md (not via eth-account)."""
    def word(v) -> bytes:
        if isinstance(v, str) and v.startswith("0x") and len(v) == 42:
            return bytes(12) + bytes.fromhex(v[2:])
        if isinstance(v, bytes):
            return v
        return int(v).to_bytes(32, "big")

    domain_type = keccak(text="EIP712Domain(string name,string version,bytes32 salt)")
    domain = keccak(domain_type + keccak(text="DvP Trade Instruction") + keccak(text="2") + SALT)
    type_hash = keccak(text="TradeInstruction(bytes32 tradeId,uint256 stChainId,address stToken,uint256 stAmount,"
                            "uint256 scChainId,address scToken,uint256 scAmount,address sellerStAccount,"
                            "address sellerScAccount,address buyerScAccount,address buyerStAccount,uint64 deadline)")
    order = ["tradeId", "stChainId", "stToken", "stAmount", "scChainId", "scToken", "scAmount", "sellerStAccount",
             "sellerScAccount", "buyerScAccount", "buyerStAccount", "deadline"]
    values = {**ins.model_dump(), "tradeId": ins.trade_id_bytes}
    struct = keccak(type_hash + b"".join(word(values[k]) for k in order))
    return keccak(b"\x19\x01" + domain + struct)


def test_signature_made_independently_is_accepted():
    ins = instruction()
    sig = keys.PrivateKey(PTS.key).sign_msg_hash(_independent_digest(ins))
    v = sig.v + 27
    signed = SignedInstruction(instruction=ins, signature="0x" + (sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big")
                                                                  + bytes([v])).hex())
    assert signed.signer(SALT) == PTS.address
    assert sign_instruction(ins, PTS.key, SALT).signature == signed.signature  # our own signer agrees byte for byte
    assert signed.signer(bytes(32)) != PTS.address  # another deployment's domain: another (untrusted) signer


def test_an_instruction_signed_with_ethers_js_verifies_only_for_its_own_domain_salt():
    """docs/trade-instruction.md's snippet, run by node with ethers v6 (no project code signs)."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent / "js" / "sign_instruction.js"
    doc = instruction().model_dump()
    out = subprocess.run(["node", str(script), PTS.key.to_0x_hex(), "0x" + SALT.hex()], input=json.dumps(doc),
                         capture_output=True, text=True, timeout=60, check=True)
    signed = parse_signed(json.loads(out.stdout))
    assert signed.signer(SALT) == PTS.address
    assert signed.signer(bytes.fromhex("5f" * 32)) != PTS.address


def test_tampered_instruction_recovers_another_signer():
    signed = sign_instruction(instruction(), PTS.key, SALT)
    tampered = SignedInstruction(instruction=instruction(scAmount=1), signature=signed.signature)
    assert tampered.signer(SALT) != PTS.address


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("stAmount", 0, "greater than 0"),
        ("stAmount", -5, "greater than 0"),
        ("scAmount", 2**256, "less than or equal"),
        ("stAmount", "10", "valid integer"),
        ("sellerStAccount", SELLER.lower().replace("0x", "0X"), "address"),
        ("buyerStAccount", "0x" + BUYER[2:].swapcase() if BUYER[2:] != BUYER[2:].swapcase() else BUYER, "checksum"),
        ("tradeId", "0x1234", "pattern"),
        ("deadline", 2**64, "less than or equal"),
    ],
)
def test_malformed_fields_are_refused_with_the_field_named(field, value, fragment):
    doc = {"instruction": {**instruction().model_dump(), field: value}, "signature": "0x" + "11" * 65}
    with pytest.raises(InvalidInstruction) as err:
        parse_signed(doc)
    assert field in str(err.value) and err.value.code == "invalid_field"


def test_unknown_fields_are_refused():
    doc = {"instruction": {**instruction().model_dump(), "extra": 1}, "signature": "0x" + "11" * 65}
    with pytest.raises(InvalidInstruction):
        parse_signed(doc)


def test_terminal_states_have_no_way_out_and_forward_path_exists():
    for s in TERMINAL:
        assert ALLOWED[s] == frozenset()
    path = [TradeState.MATCHED, TradeState.ST_LOCKED, TradeState.SC_LOCKED, TradeState.SC_CLAIMED, TradeState.SETTLED]
    assert all(can_transition(a, b) for a, b in zip(path, path[1:]))
    assert not can_transition(TradeState.SC_CLAIMED, TradeState.ABORTED)  # the secret is public: only forward
    assert not can_transition(TradeState.SETTLED, TradeState.ABORTED)


H = os.urandom(32)
T_ST = NOW + 300


def st_lock(**over) -> ObservedLock:
    f = dict(sender=SELLER, receiver=BUYER, token=ST_TOKEN, amount=10, hashlock=H, timelock=T_ST)
    f.update(over)
    return ObservedLock(**f)


def sc_lock(**over) -> ObservedLock:
    f = dict(sender=BUYER, receiver=SELLER, token=SC_TOKEN, amount=1000, hashlock=H, timelock=T_ST - POLICY.delta())
    f.update(over)
    return ObservedLock(**f)


def view(st=LegView(), sc=LegView(), now=NOW, **over) -> TradeView:
    f = dict(instruction=instruction(), st=st, sc=sc, now_st=now, now_sc=now, our_hashlock=H, planned_t_st=T_ST)
    f.update(over)
    return TradeView(**f)


BOTH = Roles(seller=True, buyer=True, st_gas=True, sc_gas=True)
SELLER_ONLY = Roles(seller=True, st_gas=True, sc_gas=True)
BUYER_ONLY = Roles(buyer=True, st_gas=True, sc_gas=True)


def test_happy_path_decisions():
    assert decide(view(), BOTH, POLICY).actions == [Action.LOCK_ST]
    d = decide(view(st=LegView(lock=st_lock())), BOTH, POLICY)
    assert (d.state, d.actions) == (TradeState.ST_LOCKED, [Action.LOCK_SC])
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock())), BOTH, POLICY)
    assert d.state == TradeState.SC_LOCKED and d.actions == [Action.CLAIM_SC]  # the ST claim waits for the reveal
    # our own SC claim seen at depth 0 is not enough while we are also the seller: it could still vanish
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), seen_preimage=b"s"), BOTH, POLICY)
    assert d.state == TradeState.SC_LOCKED and d.actions == [Action.CLAIM_SC]
    # a buyer-side relayer claims with a secret seen at depth 0 (a secret stays valid whatever the block's fate)
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), seen_preimage=b"s"), BUYER_ONLY, POLICY)
    assert d.state == TradeState.SC_LOCKED and d.actions == [Action.CLAIM_ST]
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock(), claimed=True, preimage=b"s")), BUYER_ONLY,
               POLICY)
    assert d.state == TradeState.SC_CLAIMED and d.actions == [Action.CLAIM_ST]
    d = decide(view(st=LegView(lock=st_lock(), claimed=True), sc=LegView(lock=sc_lock(), claimed=True)), BOTH, POLICY)
    assert d.state == TradeState.SETTLED and d.actions == []


@pytest.mark.parametrize("over", [dict(amount=9), dict(receiver=SELLER), dict(token=SC_TOKEN),
                                  dict(timelock=NOW + 7200), dict(hashlock=bytes(32))])
def test_buyer_never_locks_against_a_wrong_st_lock(over):
    d = decide(view(st=LegView(lock=st_lock(**over))), BUYER_ONLY, POLICY)
    assert Action.LOCK_SC not in d.actions and d.notes


@pytest.mark.parametrize("over", [dict(amount=999), dict(receiver=BUYER), dict(hashlock=os.urandom(32)),
                                  dict(timelock=T_ST - POLICY.delta() + 1)])
def test_seller_never_claims_a_wrong_sc_lock(over):
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock(**over))), SELLER_ONLY, POLICY)
    assert Action.CLAIM_SC not in d.actions and Action.CLAIM_ST not in d.actions


def test_no_lock_when_time_is_too_short_and_no_claim_at_or_after_timelock():
    d = decide(view(st=LegView(lock=st_lock(timelock=NOW + POLICY.delta() + 1))), BUYER_ONLY, POLICY)
    assert Action.LOCK_SC not in d.actions
    assert Action.LOCK_ST not in decide(view(planned_t_st=NOW + POLICY.min_st_window() - 1), BOTH, POLICY).actions
    late = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=T_ST - POLICY.delta())
    assert Action.CLAIM_SC not in decide(late, BOTH, POLICY).actions


def test_refunds_are_due_by_themselves_after_the_timelocks():
    d = decide(view(st=LegView(lock=st_lock()), now=T_ST), SELLER_ONLY, POLICY)
    assert d.state == TradeState.REFUNDING and d.actions == [Action.REFUND_ST]
    d = decide(view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()), now=T_ST - POLICY.delta(),
                    our_hashlock=None), BUYER_ONLY, POLICY)
    assert Action.REFUND_SC in d.actions and Action.REFUND_ST not in d.actions
    d = decide(view(st=LegView(lock=st_lock(), refunded=True), sc=LegView(lock=sc_lock(), refunded=True), now=T_ST),
               BOTH, POLICY)
    assert d.state == TradeState.ABORTED


def test_nothing_locked_past_the_deadline_is_aborted():
    d = decide(view(now=NOW + 3600, planned_t_st=None, our_hashlock=None), BOTH, POLICY)
    assert d.state == TradeState.ABORTED and d.actions == []


def test_clock_skew_beyond_the_bound_stops_new_locks():
    d = decide(view(st=LegView(lock=st_lock()), clock_offset=POLICY.max_clock_skew + 1), BUYER_ONLY, POLICY)
    assert Action.LOCK_SC not in d.actions


def test_one_sided_outcome_is_flagged_and_final_in_both_directions():
    d = decide(view(st=LegView(lock=st_lock(), refunded=True), sc=LegView(lock=sc_lock(), claimed=True, preimage=b"s"),
                    now=T_ST), BOTH, POLICY)
    assert d.one_sided and d.state is TradeState.ONE_SIDED and d.actions == []
    d = decide(view(st=LegView(lock=st_lock(), claimed=True, preimage=b"s"), sc=LegView(lock=sc_lock(), refunded=True),
                    now=T_ST), BOTH, POLICY)
    assert d.one_sided and d.state is TradeState.ONE_SIDED and d.actions == []
    assert TradeState.ONE_SIDED in TERMINAL and can_transition(TradeState.SC_CLAIMED, TradeState.ONE_SIDED)


def test_a_claim_is_kept_trying_while_the_chain_itself_is_before_the_timelock():
    """Regression (found by the long chaos run): after a chain stop the projected clock ran past T_st while the
    chain's own clock had not; the relayer gave up the ST claim, refunded later, and the trade ended one-sided."""
    secret_public = LegView(lock=sc_lock(), claimed=True, preimage=b"s")
    stalled = view(st=LegView(lock=st_lock()), sc=secret_public, now=T_ST + 8, head_st=T_ST - 9, head_sc=T_ST)
    d = decide(stalled, BUYER_ONLY, POLICY)
    assert Action.CLAIM_ST in d.actions and Action.REFUND_ST not in d.actions
    # once the chain itself is past T_st the claim is impossible and the refund is due
    d = decide(view(st=LegView(lock=st_lock()), sc=secret_public, now=T_ST, head_st=T_ST), BUYER_ONLY, POLICY)
    assert Action.CLAIM_ST not in d.actions and Action.REFUND_ST in d.actions and d.state == TradeState.SC_CLAIMED


def test_locks_still_use_the_conservative_projected_clock():
    d = decide(view(st=LegView(lock=st_lock()), now=T_ST - POLICY.delta(), head_st=NOW, head_sc=NOW), BUYER_ONLY,
               POLICY)
    assert Action.LOCK_SC not in d.actions


# -- same-ledger path


def test_atomic_trade_settles_only_on_our_terms_and_aborts_only_after_a_confirmed_block_passes_the_deadline():
    from relayer.protocol.rules import AtomicView, decide_atomic

    ins = instruction(scChainId=1)
    both = Roles(seller=True, buyer=True, st_gas=True, sc_gas=True)
    d = decide_atomic(AtomicView(ins, settled=False, now=NOW, confirmed_time=NOW - 2), both, POLICY)
    assert d.state == TradeState.MATCHED and d.actions == [Action.SETTLE_DVP]
    assert decide_atomic(AtomicView(ins, True, NOW, NOW - 2), both, POLICY).state == TradeState.SETTLED
    # the projected clock is past the deadline but no confirmed block is: a settle may still be mined
    late = decide_atomic(AtomicView(ins, False, ins.deadline + 5, ins.deadline - 1), both, POLICY)
    assert late.state == TradeState.MATCHED and late.actions == []  # too late to start, too early to abort
    assert decide_atomic(AtomicView(ins, False, ins.deadline + 5, ins.deadline), both, POLICY).state \
        == TradeState.ABORTED
    # one party's key only: never sends, says why
    one = decide_atomic(AtomicView(ins, False, NOW, NOW - 2), Roles(seller=True, st_gas=True), POLICY)
    assert one.actions == [] and "both parties" in one.notes[0]


def test_a_refunded_trade_is_not_aborted_while_a_late_sc_lock_could_still_be_unread():
    """Found by the long chaos run: ABORTED was final before a late counterparty SC lock (made before T_st) was
    read, so nobody refunded it. Over only once every coin-ledger block up to T_st has been read."""
    refunded = LegView(lock=st_lock(), refunded=True)
    d = decide(view(st=refunded, now=T_ST + 1, sc_confirmed_time=T_ST - 5), BOTH, POLICY)
    assert d.state != TradeState.ABORTED
    d = decide(view(st=refunded, now=T_ST + 1, sc_confirmed_time=T_ST), BOTH, POLICY)
    assert d.state == TradeState.ABORTED
    late = LegView(lock=sc_lock(timelock=T_ST - 2))  # seen in time: refunded by us as a watcher, then ABORTED
    d = decide(view(st=refunded, sc=late, now=T_ST + 1, sc_confirmed_time=T_ST), BOTH, POLICY)
    assert d.state == TradeState.REFUNDING and Action.REFUND_SC in d.actions


def test_a_stale_chain_blocks_what_needs_it_and_nothing_else():
    """Found by the long chaos run: a worker restarted while one chain was down did nothing at all, so an ST claim
    whose secret was already public waited for the coin ledger. Now each chain is followed on its own."""
    good = view(st=LegView(lock=st_lock()), sc=LegView(lock=sc_lock()))
    stale_st = TradeView(**{**good.__dict__, "st_fresh": False})
    assert decide(stale_st, BOTH, POLICY).actions == []  # above all: no reveal while the ST claim could not follow
    revealed_sc_down = view(st=LegView(lock=st_lock()), sc=LegView(), revealed=True, sc_fresh=False)
    assert decide(revealed_sc_down, BOTH, POLICY).actions == [Action.CLAIM_ST]
    expired_sc_down = view(st=LegView(lock=st_lock()), now=T_ST, sc_fresh=False)
    assert decide(expired_sc_down, SELLER_ONLY, POLICY).actions == [Action.REFUND_ST]
    assert decide(view(sc_fresh=False), BOTH, POLICY).actions == []  # no new lock


def test_the_signing_digest_is_the_one_eth_account_hashes_from_the_typed_data():
    """Intake verifies with a hand-built EIP-712 digest (the domain hashed once per salt); it must be exactly what
    eth-account (and ethers.js, test above) sign, for any terms, including the largest integers."""
    from hypothesis import given, settings, strategies as st
    from eth_account.messages import _hash_eip191_message, encode_typed_data

    from relayer.protocol.instruction import signing_digest

    from eth_utils import to_checksum_address

    # an all-digit address has no EIP-55 letters to check, and intake refuses it as unchecksummed
    addr = st.binary(min_size=20, max_size=20).filter(lambda b: any(c in "abcdef" for c in b.hex())).map(
        to_checksum_address)
    big = st.integers(1, 2**256 - 1)

    @settings(max_examples=60, deadline=None)
    @given(tid=st.binary(min_size=32, max_size=32), chains=st.tuples(big, big), amounts=st.tuples(big, big),
           accounts=st.tuples(addr, addr, addr, addr, addr, addr), deadline=st.integers(1, 2**64 - 1),
           salt=st.binary(min_size=32, max_size=32))
    def check(tid, chains, amounts, accounts, deadline, salt):
        ins = TradeInstruction(tradeId="0x" + tid.hex(), stChainId=chains[0], stToken=accounts[0],
                               stAmount=amounts[0], scChainId=chains[1], scToken=accounts[1], scAmount=amounts[1],
                               sellerStAccount=accounts[2], sellerScAccount=accounts[3], buyerScAccount=accounts[4],
                               buyerStAccount=accounts[5], deadline=deadline)
        expected = _hash_eip191_message(encode_typed_data(full_message=ins.typed_data(salt)))
        assert signing_digest(ins, salt) == expected

    check()


def test_the_relayer_hashes_with_the_c_keccak_not_pycryptodomes():
    """eth-hash picks pycryptodome first when both are installed, ~4x slower per hash on the relayer's short
    inputs (scripts/keccak_speed.py); importing the relayer chooses safe-pysha3 before anything hashes."""
    import subprocess
    import sys

    code = ("import os; os.environ.pop('ETH_HASH_BACKEND', None)\n"
            "import relayer.protocol.instruction\n"
            "from eth_hash.auto import keccak\n"
            "assert keccak(b'').hex() == 'c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470'\n"
            "print(type(keccak._backend.keccak256.__self__).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "eth_hash.backends.pysha3"
