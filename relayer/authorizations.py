"""Holder-signed locks: the holder of an account (an investor's wallet, a firm's custody system) signs the
escrow's EIP-712 `Lock` off the relayer; the relayer checks it against the trade's terms, keeps it with the trade
and submits `lockWithSig` (`lockWithPermit` with an ERC-2612 permit) from an account it holds. It never needs that
holder's key. Accounts served this way are listed in DVP_HOLDER_SIGNED; docs/holder-signed-locks.md has the
EIP-712 types and an ethers.js example.

The ST leg (the seller's): the relayer makes the secret; the holder signs its hashlock and a timelock of its
choosing within the protocol's bounds, which becomes the trade's T_st. The SC leg (the buyer's): once the seller's
ST lock is confirmed with the right terms, the holder signs that lock's hashlock and a T_sc at most T_st - Δ.

What is checked before anything is stored (each refusal has its code; nothing is sent on a refusal):
wrong_terms (a field differs from what the trade needs), expired (the signature's deadline leaves no time to mine
it), replayed (its nonce is used on chain already), nonce_in_use (another trade holds an authorisation with that
nonce), wrong_signer (the signature is not the account's), no_allowance (no allowance and no permit),
too_early (the SC leg before the ST lock is confirmed, the ST leg before the secret exists),
not_holder_signed, conflicting_authorization, trade_finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_utils import is_checksum_address, to_checksum_address

from adapters.contracts import lock_typed_data
from relayer.actions import dvp_terms
from relayer.api_models import DvpAuthorizationBody, LockAuthorizationBody
from relayer.errors import AuthorizationRefused, InvalidInstruction
from relayer.leases import ACTOR
from relayer.logging import get_logger
from relayer.protocol.instruction import TradeInstruction, validated
from relayer.protocol.rules import check_st_lock, choose_lock, sc_timelock_for
from relayer.protocol.states import TERMINAL
from relayer.routing import Route, Routes
from relayer.store import Store, TradeRecord

LEGS = ("st", "sc")
NONCE_WINDOW = 64  # how far ahead of a holder's on-chain nonce an authorisation may be
LOCK_FIELDS = ("tradeId", "token", "amount", "receiver", "hashlock", "timelock", "nonce", "deadline")


@dataclass(frozen=True)
class Permit:
    """An ERC-2612 permit for the escrow, signed by the holder (used when its allowance is short)."""

    value: int
    deadline: int
    v: int
    r: bytes
    s: bytes


@dataclass(frozen=True)
class LockAuthorization:
    """A holder's signed `Lock` for one leg of one trade, as posted and as kept in the trade record."""

    leg: str  # "st" (the seller's ST lock) or "sc" (the buyer's SC lock)
    trade_id: bytes
    token: str
    amount: int
    receiver: str
    hashlock: bytes
    timelock: int
    nonce: int
    deadline: int
    signature: bytes
    permit: Permit | None = None

    @property
    def terms(self) -> tuple[Any, ...]:
        """(tradeId, token, amount, receiver, hashlock, timelock): the escrow's LockTerms."""
        return (self.trade_id, self.token, self.amount, self.receiver, self.hashlock, self.timelock)

    @property
    def permit_args(self) -> tuple[int, int, bytes, bytes] | None:
        p = self.permit
        return None if p is None else (p.deadline, p.v, p.r, p.s)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "leg": self.leg, "lock": {"tradeId": "0x" + self.trade_id.hex(), "token": self.token,
                                      "amount": str(self.amount), "receiver": self.receiver,
                                      "hashlock": "0x" + self.hashlock.hex(), "timelock": self.timelock,
                                      "nonce": self.nonce, "deadline": self.deadline},
            "signature": "0x" + self.signature.hex()}
        if self.permit is not None:
            p = self.permit
            doc["permit"] = {"value": str(p.value), "deadline": p.deadline, "v": p.v, "r": "0x" + p.r.hex(),
                             "s": "0x" + p.s.hex()}
        return json.dumps(doc, separators=(",", ":"))

    def same_as(self, other: LockAuthorization) -> bool:
        return self.to_json() == other.to_json()


@dataclass(frozen=True)
class DvpSignature:
    """One party's EIP-712 `DvP` signature for a same-ledger trade (AtomicDvP.settle needs both)."""

    party: str
    signature: bytes
    leg: str = "dvp"


def parse_authorization(doc: Any) -> LockAuthorization | DvpSignature:
    """The POST body (api_models.LockAuthorizationBody, or DvpAuthorizationBody for leg "dvp") as a
    LockAuthorization or a DvpSignature; InvalidInstruction (invalid_field) naming what is malformed."""
    if isinstance(doc, dict) and doc.get("leg") == "dvp":
        dvp = validated(DvpAuthorizationBody, doc)
        if not _checksum_ok(dvp.party):
            raise InvalidInstruction("party: bad EIP-55 checksum", code="invalid_field")
        return DvpSignature(to_checksum_address(dvp.party), bytes.fromhex(dvp.signature[2:]))
    body = validated(LockAuthorizationBody, doc)
    lock, p = body.lock, body.permit
    for name in ("token", "receiver"):
        if not _checksum_ok(getattr(lock, name)):
            raise InvalidInstruction(f"lock.{name}: bad EIP-55 checksum", code="invalid_field")
    permit = None if p is None else Permit(p.value, p.deadline, p.v, bytes.fromhex(p.r[2:]), bytes.fromhex(p.s[2:]))
    return LockAuthorization(
        leg=body.leg, trade_id=bytes.fromhex(lock.tradeId[2:]), token=to_checksum_address(lock.token),
        amount=lock.amount, receiver=to_checksum_address(lock.receiver), hashlock=bytes.fromhex(lock.hashlock[2:]),
        timelock=lock.timelock, nonce=lock.nonce, deadline=lock.deadline,
        signature=bytes.fromhex(body.signature[2:]), permit=permit)


_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0  # secp256k1 n / 2


def _strict(signature: bytes, where: str) -> None:
    """Only the form the contracts' ECDSA (OpenZeppelin tryRecover) accepts: low s, v 27 or 28. eth-account
    recovers the same address from a high-s or v=0/1 copy, which the chain would refuse."""
    if int.from_bytes(signature[32:64], "big") > _HALF_N or signature[64] not in (27, 28):
        raise AuthorizationRefused(f"{where}: not in the form the contract takes (s in the lower half of the "
                                   "curve order, v 27 or 28)", code="wrong_signer")


def _checksum_ok(address: str) -> bool:
    """All lower case, all upper case, or a correct EIP-55 mix."""
    hexpart = address[2:]
    return hexpart in (hexpart.lower(), hexpart.upper()) or is_checksum_address(address)


def stored_authorization(rec: TradeRecord, leg: str) -> LockAuthorization | None:
    """The authorisation kept with the trade for this leg, if any."""
    raw = rec.get(f"auth_{leg}")
    if not raw:
        return None
    auth = parse_authorization(json.loads(raw))
    assert isinstance(auth, LockAuthorization)
    return auth


def kept_dvp_signature(rec: TradeRecord, party: str) -> bytes | None:
    """A party's DvP signature given to this relayer for the trade (None: not given)."""
    raw = rec.get(f"dvp_sig_{party}")
    return bytes.fromhex(raw) if raw else None


def permit_typed_data(token: str, name: str, chain_id: int, owner: str, spender: str, value: int, nonce: int,
                      deadline: int) -> dict[str, Any]:
    """The ERC-2612 Permit message (OpenZeppelin ERC20Permit: domain version "1")."""
    return {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  "Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                             {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                             {"name": "deadline", "type": "uint256"}]},
        "primaryType": "Permit",
        "domain": {"name": name, "version": "1", "chainId": chain_id, "verifyingContract": token},
        "message": {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline},
    }


def _recover(message: dict[str, Any], signature: bytes) -> str | None:
    try:
        return str(Account.recover_message(_encode(message), signature=signature))
    except Exception:  # noqa: BLE001 - a malformed signature (bad v, s out of range): nobody signed it
        return None


def _encode(message: dict[str, Any]) -> Any:
    from eth_account.messages import encode_typed_data

    return encode_typed_data(full_message=message)


class HolderLocks:
    """The authorisation desk: what a holder must sign for a leg, and the check-then-keep of what they signed."""

    def __init__(self, routes: Routes, store: Store, holders: frozenset[str],
                 on_accepted: Callable[[str], None] = lambda trade_id: None) -> None:
        self.routes = routes
        self.store = store
        self.holders = holders
        self.on_accepted = on_accepted  # wake the trade in this worker (others see it at their reconciliation)
        self.log = get_logger()

    def sender(self, ins: TradeInstruction, leg: str) -> str:
        return ins.sellerStAccount if leg == "st" else ins.buyerScAccount

    def serves(self, ins: TradeInstruction, leg: str) -> bool:
        """This relayer submits that leg's lock from its holder's authorisation."""
        return self.sender(ins, leg) in self.holders

    # ---- what to sign

    async def request(self, rec: TradeRecord, leg: str) -> dict[str, Any]:
        """The EIP-712 `Lock` (full message, for eth_signTypedData_v4) the leg's holder should sign now, with the
        bounds the timelock may take and, for a token with ERC-2612, the Permit to sign when no allowance is set."""
        ins = rec.signed.instruction
        route = self.routes.route(ins)
        self._check_leg(rec, leg)
        side = route.st if leg == "st" else route.sc
        policy = route.policy
        now = side.now()
        sender = self.sender(ins, leg)
        hashlock, earliest, latest = self._expected(rec, route, leg, now)
        suggested = max(earliest, min(latest, now + policy.st_lock_duration)) if leg == "st" else latest
        token, amount, receiver = self._asset(ins, leg)
        nonce, allowance = await side.ledger.holder_state(sender, token)
        nonce = await self._free_nonce(side, sender, nonce, rec.trade_id)
        last_use = suggested - (policy.min_st_window() if leg == "st" else policy.min_st_window() - policy.delta())
        deadline = min(last_use, now + 600)
        chain_id = side.ledger.chain.chain_id or await side.ledger.chain.connect()
        terms = (ins.trade_id_bytes, token, amount, receiver, hashlock, suggested)
        doc: dict[str, Any] = {
            "leg": leg, "signer": sender,
            "typed_data": _jsonable(lock_typed_data(side.ledger.escrow, chain_id, terms, nonce, deadline)),
            "timelock_bounds": {"earliest": earliest, "latest": latest},
            "allowance": str(allowance),
        }
        if allowance < amount:
            permit_nonce = await side.ledger.permit_nonce(token, sender)
            if permit_nonce is not None:
                name = await side.ledger.token_name(token)
                doc["permit_typed_data"] = _jsonable(permit_typed_data(
                    token, name, chain_id, sender, side.ledger.escrow, amount, permit_nonce, deadline))
        return doc

    # ---- the check, then keep it

    async def accept(self, rec: TradeRecord, auth: LockAuthorization) -> bool:
        """Check `auth` against the trade and the chain; keep it with the trade (True) or find the same one kept
        already (False). AuthorizationRefused with a code otherwise: nothing is stored or sent."""
        ins = rec.signed.instruction
        leg = auth.leg
        self._check_leg(rec, leg)
        route = self.routes.route(ins)
        side = route.st if leg == "st" else route.sc
        now = side.now()
        sender = self.sender(ins, leg)
        kept = stored_authorization(rec, leg)
        if kept is not None and kept.same_as(auth):
            return False
        if await side.ledger.swap_slot(side.ledger.swap_id_of(sender, ins.trade_id_bytes)) != bytes(32):
            raise AuthorizationRefused(f"the {leg} leg is locked already", code="conflicting_authorization")
        if kept is not None and not await self._unusable(side, kept, sender):
            raise AuthorizationRefused(f"the {leg} leg of this trade has a usable authorisation already (nonce "
                                       f"{kept.nonce}); it is not replaced", code="conflicting_authorization")
        hashlock, earliest, latest = self._expected(rec, route, leg, now)
        token, amount, receiver = self._asset(ins, leg)
        wrong = [f"{name} is {got}, the trade needs {want}" for name, got, want in (
            ("tradeId", "0x" + auth.trade_id.hex(), ins.tradeId), ("token", auth.token, token),
            ("amount", auth.amount, amount), ("receiver", auth.receiver, receiver),
            ("hashlock", "0x" + auth.hashlock.hex(), "0x" + hashlock.hex())) if got != want]
        if not earliest <= auth.timelock <= latest:
            wrong.append(f"timelock is {auth.timelock}, the trade needs one from {earliest} to {latest} "
                         f"(chain time now {now})")
        # after this the protocol would not send the lock any more (3Δ left on T_st, 2Δ on T_sc): a later
        # deadline would only keep an authorisation that can no longer be used from being replaced
        last_use = auth.timelock - (route.policy.min_st_window() if leg == "st"
                                    else route.policy.min_st_window() - route.policy.delta())
        if auth.deadline > last_use:
            wrong.append(f"deadline is {auth.deadline}, after the last moment the lock may be sent ({last_use})")
        if wrong:
            raise AuthorizationRefused("; ".join(wrong), code="wrong_terms")
        # the lock must be mined before the signature's deadline: one inclusion delay and a block, at least
        usable_until = now + int(route.policy.inclusion_delay + side.block_time) + 1
        if auth.deadline < usable_until:
            raise AuthorizationRefused(f"deadline {auth.deadline} leaves no time to mine the lock (chain time now "
                                       f"{now}; at least {usable_until} needed)", code="expired")
        chain_id = side.ledger.chain.chain_id or await side.ledger.chain.connect()
        _strict(auth.signature, "signature")
        message = lock_typed_data(side.ledger.escrow, chain_id, auth.terms, auth.nonce, auth.deadline)
        signer = _recover(message, auth.signature)
        if signer != sender:
            raise AuthorizationRefused(f"the signature is {signer or 'nobody'}'s, not the {leg} holder {sender}'s "
                                       "(or it signs other terms than these)", code="wrong_signer")
        nonce, allowance = await side.ledger.holder_state(sender, token)
        if auth.nonce < nonce:
            raise AuthorizationRefused(f"nonce {auth.nonce} is used on chain already (the holder's next is "
                                       f"{nonce}): a replayed authorisation", code="replayed")
        if auth.nonce >= nonce + NONCE_WINDOW:
            raise AuthorizationRefused(f"nonce {auth.nonce} is {auth.nonce - nonce} ahead of the holder's next "
                                       f"({nonce}): at most {NONCE_WINDOW - 1}", code="wrong_terms")
        if allowance < amount:
            await self._check_permit(side, auth, sender, chain_id, amount)
        if not await self._reserve(chain_id, sender, auth.nonce, rec.trade_id):
            raise AuthorizationRefused(f"nonce {auth.nonce} of {sender} is held by another trade's authorisation; "
                                       f"sign with the next free nonce", code="nonce_in_use")
        fields: dict[str, Any] = {f"auth_{leg}": auth.to_json()}
        if leg == "st":
            fields["t_st"] = auth.timelock  # the holder's timelock is the plan
        try:
            await self.store.update(rec, fields, actor=ACTOR, event="authorization_accepted", leg=leg,
                                    nonce=auth.nonce, deadline=auth.deadline, timelock=auth.timelock,
                                    permit=auth.permit is not None)
        except BaseException:
            if kept is None or kept.nonce != auth.nonce:
                await self.store.release_lock_nonce(chain_id, sender, auth.nonce, rec.trade_id)
            raise
        if kept is not None and kept.nonce != auth.nonce:
            await self.store.release_lock_nonce(chain_id, sender, kept.nonce, rec.trade_id)
        self.log.info("authorization_accepted", trade_id=rec.trade_id, leg=leg, nonce=auth.nonce)
        self.on_accepted(rec.trade_id)
        return True

    async def _reserve(self, chain_id: int, holder: str, nonce: int, trade_id: str) -> bool:
        """Hold the nonce for this trade; a reservation of a trade that is over or no longer keeps that nonce is
        stale and taken over."""
        if await self.store.reserve_lock_nonce(chain_id, holder, nonce, trade_id):
            return True
        other = await self.store.lock_nonce_holder(chain_id, holder, nonce)
        if other is None or await self._holds(other, holder, nonce):
            return other is None and await self.store.reserve_lock_nonce(chain_id, holder, nonce, trade_id)
        return await self.store.take_lock_nonce(chain_id, holder, nonce, other, trade_id)

    async def _holds(self, trade_id: str, holder: str, nonce: int) -> bool:
        """Whether that trade, still open, keeps an authorisation of `holder` with this nonce."""
        rec = await self.store.get(trade_id)
        if rec is None or rec.state in TERMINAL:
            return False
        for leg in LEGS:
            auth = stored_authorization(rec, leg)
            if auth is not None and auth.nonce == nonce and self.sender(rec.signed.instruction, leg) == holder:
                return True
        return False

    # ---- pieces

    def _check_leg(self, rec: TradeRecord, leg: str) -> None:
        ins = rec.signed.instruction
        if rec.state in TERMINAL:
            raise AuthorizationRefused(f"the trade is {rec.state.value}", code="trade_finished")
        if not self.serves(ins, leg):
            raise AuthorizationRefused(f"this relayer does not submit {leg} locks for {self.sender(ins, leg)} "
                                       "(not in DVP_HOLDER_SIGNED)", code="not_holder_signed")
        if self.routes.route(ins).is_atomic(ins):
            raise AuthorizationRefused("a same-ledger trade settles through AtomicDvP, without locks: post its DvP "
                                       "signature (leg dvp)", code="not_htlc")

    @staticmethod
    def _asset(ins: TradeInstruction, leg: str) -> tuple[str, int, str]:
        """(token, amount, receiver) of the leg's lock."""
        if leg == "st":
            return ins.stToken, ins.stAmount, ins.buyerStAccount
        return ins.scToken, ins.scAmount, ins.sellerScAccount

    def _expected(self, rec: TradeRecord, route: Route, leg: str, now: int) -> tuple[bytes, int, int]:
        """(hashlock, earliest timelock, latest timelock) the leg's lock must have, judged at chain time `now`."""
        ins = rec.signed.instruction
        policy = route.policy
        if leg == "st":
            if rec.get("hashlock") is None:
                raise AuthorizationRefused("the relayer has not made this trade's secret yet; retry in a few "
                                           "seconds", code="too_early")
            # decide() locks only with 3Δ left on T_st; the lock itself needs an inclusion delay and a block
            earliest = now + policy.min_st_window() + policy.delta()
            return bytes.fromhex(rec.fields["hashlock"]), earliest, ins.deadline
        st_lock = self._st_lock(rec, route)
        if st_lock is None:
            raise AuthorizationRefused("the seller's ST lock is not confirmed with the trade's terms yet; the SC "
                                       "lock takes its hashlock and timelock", code="too_early")
        latest = sc_timelock_for(st_lock.timelock, policy.delta())
        earliest = now + policy.min_st_window() - policy.delta()  # as decide() needs for the buyer's lock
        return st_lock.hashlock, earliest, latest

    @staticmethod
    def _st_lock(rec: TradeRecord, route: Route) -> Any:
        """The seller's live, k-confirmed ST lock with the trade's terms (None when there is none)."""
        ins = rec.signed.instruction
        mine = [i for i in route.st.index.instances(ins.trade_id_bytes) if i.lock.sender == ins.sellerStAccount]
        pick = choose_lock([i.view() for i in mine], lambda lock: check_st_lock(ins, lock))
        if pick is None:
            return None
        leg = mine[pick].view()
        if not leg.active or leg.lock is None or check_st_lock(ins, leg.lock):
            return None
        return leg.lock

    @staticmethod
    async def _unusable(side: Any, kept: LockAuthorization, sender: str) -> bool:
        """A kept authorisation may be replaced only once it can never be sent: its nonce was used by another lock
        of the holder, or a mined block is stamped after its deadline (a lock still pending then cannot land)."""
        nonce, _ = await side.ledger.holder_state(sender, kept.token)
        return bool(nonce > kept.nonce or side.head_timestamp > kept.deadline)

    async def _free_nonce(self, side: Any, sender: str, onchain: int, trade_id: str) -> int:
        """The first nonce from the on-chain one that no other open trade's kept authorisation holds."""
        chain_id = side.ledger.chain.chain_id or await side.ledger.chain.connect()
        for n in range(onchain, onchain + NONCE_WINDOW):
            holder = await self.store.lock_nonce_holder(chain_id, sender, n)
            if holder is None or holder == trade_id or not await self._holds(holder, sender, n):
                return n
        return onchain + NONCE_WINDOW - 1

    async def _check_permit(self, side: Any, auth: LockAuthorization, sender: str, chain_id: int,
                            amount: int) -> None:
        """With a short allowance the lock needs a permit that the token will take: the holder's, for the escrow,
        at least the amount, at the token's current nonce, not expired."""
        if auth.permit is None:
            raise AuthorizationRefused(f"{sender} has not approved the escrow for {amount} and sent no ERC-2612 "
                                       "permit", code="no_allowance")
        p = auth.permit
        token_nonce = await side.ledger.permit_nonce(auth.token, sender)
        if token_nonce is None:
            raise AuthorizationRefused(f"the token {auth.token} has no ERC-2612 permit: approve the escrow instead",
                                       code="no_allowance")
        if p.value != amount:  # lockWithPermit calls permit(…, amount, …): another value never verifies
            raise AuthorizationRefused(f"the permit's value {p.value} is not the amount {amount}",
                                       code="wrong_terms")
        if p.deadline < auth.deadline:
            raise AuthorizationRefused(f"the permit expires ({p.deadline}) before the lock authorisation "
                                       f"({auth.deadline})", code="expired")
        name = await side.ledger.token_name(auth.token)
        message = permit_typed_data(auth.token, name, chain_id, sender, side.ledger.escrow, p.value, token_nonce,
                                    p.deadline)
        signature = p.r + p.s + bytes([p.v])
        _strict(signature, "permit")
        if _recover(message, signature) != sender:
            raise AuthorizationRefused(f"the permit is not {sender}'s for the escrow at the token's nonce "
                                       f"{token_nonce}", code="wrong_signer")


class SettlementAuthorizations:
    """Same-ledger trades between two firms: each firm's relayer signs for its own party only; the parties' DvP
    signatures meet here (handed over by the back office from the other firm's GET), and whichever relayer has
    both sends the one AtomicDvP.settle."""

    def __init__(self, routes: Routes, store: Store, on_accepted: Callable[[str], None] = lambda t: None) -> None:
        self.routes = routes
        self.store = store
        self.on_accepted = on_accepted
        self.log = get_logger()

    def _route(self, rec: TradeRecord) -> Route:
        route = self.routes.route(rec.signed.instruction)
        if not route.is_atomic(rec.signed.instruction):
            raise AuthorizationRefused("this trade does not settle through an AtomicDvP contract (not a same-ledger "
                                       "trade, or none configured): its legs take lock authorisations",
                                       code="not_same_ledger")
        if rec.state in TERMINAL:
            raise AuthorizationRefused(f"the trade is {rec.state.value}", code="trade_finished")
        return route

    async def request(self, rec: TradeRecord) -> dict[str, Any]:
        """The DvP terms as EIP-712 and every party signature this relayer can give: its own parties' (made now with
        their keys) and those it was given."""
        route = self._route(rec)
        ins = rec.signed.instruction
        ledger = route.st.ledger
        terms = dvp_terms(ins)
        signatures: dict[str, str] = {}
        for party in (ins.sellerStAccount, ins.buyerScAccount):
            sig = (await ledger.authorise_dvp(party, terms) if party in ledger.all_senders
                   else kept_dvp_signature(rec, party))
            if sig is not None:
                signatures[party] = "0x" + sig.hex()
        return {"leg": "dvp", "typed_data": _jsonable(ledger.dvp_message(terms)), "signatures": signatures}

    async def accept(self, rec: TradeRecord, given: DvpSignature) -> bool:
        """Keep a party's DvP signature (True), or find it kept already (False); AuthorizationRefused otherwise."""
        route = self._route(rec)
        ins = rec.signed.instruction
        if given.party not in (ins.sellerStAccount, ins.buyerScAccount):
            raise AuthorizationRefused(f"{given.party} is neither the seller nor the buyer of this trade",
                                       code="wrong_terms")
        if route.st.now() >= ins.deadline:
            raise AuthorizationRefused(f"the trade's deadline {ins.deadline} has passed", code="expired")
        kept = kept_dvp_signature(rec, given.party)
        if kept == given.signature:
            return False
        _strict(given.signature, "signature")
        signer = _recover(route.st.ledger.dvp_message(dvp_terms(ins)), given.signature)
        if signer != given.party:
            raise AuthorizationRefused(f"the signature is {signer or 'nobody'}'s, not {given.party}'s over these "
                                       "terms", code="wrong_signer")
        await self.store.update(rec, {f"dvp_sig_{given.party}": given.signature.hex()}, actor=ACTOR,
                                event="authorization_accepted", leg="dvp", party=given.party)
        self.log.info("authorization_accepted", trade_id=rec.trade_id, leg="dvp", party=given.party)
        self.on_accepted(rec.trade_id)
        return True


def _jsonable(message: dict[str, Any]) -> dict[str, Any]:
    """A typed-data message with bytes as 0x-hex and big integers as decimal strings (JSON, ethers.js)."""
    def fix(v: Any) -> Any:
        if isinstance(v, bytes):
            return "0x" + v.hex()
        if isinstance(v, int) and not isinstance(v, bool) and v >= 2**53:
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    fixed: dict[str, Any] = fix(message)
    return fixed
