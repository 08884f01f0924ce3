// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title HashedTimelockEscrow
/// @notice One escrow for any ERC-20, deployed once per chain. A swap is identified by (sender, tradeId)
///         and stored as ONE storage slot: the keccak of its remaining terms. Every event carries every
///         term so watchers never need an extra call. Hashlock = sha256(preimage) so non-EVM ledgers can
///         join. Claims are only possible strictly before the timelock, refunds only at or after it; both
///         are permissionless because funds can only go to the receiver (claim) or the sender (refund).
///         A finished swap's slot is cleared (gas refund); a lock by signature consumes a per-signer
///         nonce, so a signed lock can never be replayed after its swap was cleared.
/// @dev    Re-use of a trade id: once a swap is claimed or refunded its slot is empty again, so the same
///         sender may lock the same trade id anew. The escrow does not keep a "spent" marker: writing one
///         instead of clearing the slot would forgo the 4,800 gas SSTORE refund on every claim and refund
///         (EIP-3529) and make a trade id single-use for ever. Watchers tell the locks of one swap id apart by
///         their order on chain (each Claimed/Refunded ends the lock before it); the relayer follows only the
///         first lock with acceptable terms and refunds every other one at its timelock.
///         Token calls are SafeERC20-style (a token that returns nothing counts as success when it has
///         code, one that returns anything but true fails), written in assembly to keep the hot paths cheap.
contract HashedTimelockEscrow is EIP712, Nonces {

    /// @notice Terms chosen by the sender when locking.
    struct LockTerms {
        bytes32 tradeId;
        address token;
        uint256 amount;
        address receiver;
        bytes32 hashlock;
        uint64 timelock;
    }

    /// @notice A claim: the preimage, the swap's id and its terms except the hashlock (= sha256(preimage)).
    struct Claim {
        bytes32 preimage;
        bytes32 swapId;
        address token;
        uint256 amount;
        address receiver;
        uint64 timelock;
    }

    /// @notice Everything that identifies a live swap; passed back to refund it.
    struct Swap {
        bytes32 tradeId;
        address sender;
        address token;
        uint256 amount;
        address receiver;
        bytes32 hashlock;
        uint64 timelock;
    }

    /// @notice EIP-712 type of a lock authorisation (lockWithSig, lockWithPermit).
    bytes32 public constant LOCK_TYPEHASH = keccak256(
        "Lock(bytes32 tradeId,address token,uint256 amount,address receiver,bytes32 hashlock,uint64 timelock,uint256 nonce,uint256 deadline)"
    );

    // Storage. Declared (and inherited) state: EIP712's two fallback strings (slots 0 and 1) and Nonces'
    // `mapping(address => uint256) _nonces` (slot 2, entries at keccak256(abi.encode(owner, 2))).
    // A swap's terms hash lives at the slot `swapIdOf(sender, tradeId)` =
    // keccak256(abi.encode(SWAP_NAMESPACE, sender, tradeId)): a keccak of 96 bytes. Every slot Solidity itself
    // assigns is a small integer, keccak256 of 32 bytes (+ offset: arrays, long strings), keccak256 of 64 bytes
    // (mapping entries, nested ones too) or an ERC-7201 root (keccak256 of 32 bytes, adjusted), so no declared,
    // inherited or future variable, mapping entry or array can share a slot with a swap short of a keccak
    // collision. (Without the namespace word, tradeId 2 was exactly the slot of _nonces[sender].)
    // tests/test_storage_layout.py fails when a state variable is added without saying why it cannot collide.

    /// @dev keccak256("dvp.HashedTimelockEscrow.swap"): the namespace word of every swap slot's preimage
    ///      (a literal, as inline assembly needs; the test suite checks it against the string).
    bytes32 private constant SWAP_NAMESPACE = 0xefd1934b264826042a377f17747e8ee3d786cfbf14080dd3ae3c7e739a22a73f;

    /// @notice A swap was locked; carries every term, in the order of the stored terms hash's preimage.
    /// @dev Only tradeId is indexed (watchers filter by trade); each extra topic would cost 119 gas per lock.
    event Locked(
        bytes32 indexed tradeId,
        address sender,
        address token,
        uint256 amount,
        address receiver,
        bytes32 hashlock,
        uint64 timelock
    );
    /// @notice The swap was claimed with `preimage` (sha256(preimage) is its hashlock).
    /// @dev Claimed and Refunded name the swap by id = swapIdOf(sender, tradeId), which watchers compute. A swap id
    ///      can be locked again once its slot is empty: each Claimed/Refunded ends the latest Locked before it.
    event Claimed(bytes32 indexed swapId, bytes32 preimage);
    /// @notice The swap was paid back to its sender after its timelock.
    event Refunded(bytes32 indexed swapId);

    /// @notice A live swap already uses this (sender, tradeId).
    error SwapAlreadyExists(bytes32 tradeId, address sender);
    /// @notice No live swap with this id: never locked, or already claimed or refunded.
    error SwapNotActive(bytes32 swapId);
    /// @notice A live swap exists but the terms given do not match the ones locked.
    error TermsMismatch(bytes32 swapId);
    /// @notice A live swap exists, but not with sha256(preimage) as hashlock and these terms.
    error WrongPreimageOrTerms(bytes32 swapId);
    /// @notice The timelock has passed: the swap can only be refunded.
    error SwapExpired(bytes32 swapId, uint64 timelock);
    /// @notice The timelock has not passed yet: the swap can only be claimed.
    error SwapNotExpired(bytes32 swapId, uint64 timelock);
    /// @notice Amount zero, receiver zero or the escrow itself, zero hashlock, or a timelock not in the future.
    error InvalidTerms(bytes32 tradeId);
    /// @notice The escrow's balance grew by `received` instead of `expected` during a pull (a fee-on-transfer
    ///         token, or one whose balances move during the call; `received` is 0 when the balance shrank).
    /// @dev Only what happens during the pull is checked. A token whose escrowed balance can shrink later (a
    ///      negative rebase, a slash, a fee charged on the escrow's own transfers) would leave the last swaps of
    ///      that token unpayable: such tokens are not supported, and the relayer settles only the tokens it is
    ///      configured with (DVP_ST_TOKENS, DVP_SC_TOKENS).
    error UnsupportedToken(address token, uint256 expected, uint256 received);
    /// @notice A token call reverted silently, returned something other than true, or `token` has no code.
    error TokenCallFailed(address token);
    /// @notice The amounts of consecutive same-token entries of a lockBatch add up to more than 2**256-1.
    error BatchAmountOverflow(address token);
    /// @notice The EIP-712 lock signature is not the sender's, or was made for another nonce.
    error InvalidLockSignature(address sender);
    /// @notice The EIP-712 lock authorisation has passed its deadline.
    error LockSignatureExpired(uint256 deadline);
    /// @notice A batch call got no entries.
    error BadBatch();

    constructor() EIP712("DvpHashedTimelockEscrow", "1") {}

    // ------------------------------------------------------------------ lock

    /// @notice Lock `amount` of `token` from msg.sender for `receiver` until `timelock` (needs an allowance).
    /// @dev Named lockTokens rather than lock: the dispatcher compares selectors in ascending order, and this
    ///      one (0x4dc408fb) comes third, claimTokens (0x15a44d81) first: 22 gas per comparison saved on the two
    ///      calls every trade makes.
    /// @param tradeId The trade this swap belongs to; with msg.sender it names the swap (swapId).
    /// @param token The ERC-20 locked.
    /// @param amount How much, in the token's base units (> 0).
    /// @param receiver Who a claim pays (non-zero).
    /// @param hashlock sha256 of the secret that claims (non-zero).
    /// @param timelock Block timestamp from which the swap can only be refunded (in the future).
    function lockTokens(
        bytes32 tradeId,
        address token,
        uint256 amount,
        address receiver,
        bytes32 hashlock,
        uint64 timelock
    ) external {
        _record(tradeId, msg.sender, token, amount, receiver, hashlock, timelock);
        _pull(token, msg.sender, amount);
    }

    /// @notice Lock many swaps from msg.sender in one transaction; all or nothing. Consecutive entries of
    ///         the same token are pulled with a single transferFrom.
    /// @dev Order: every swap of a run is recorded before the run's one pull. A token that re-enters the escrow
    ///      during the pull and claims or refunds one of those swaps pays it out of what the escrow already
    ///      held; the balance check after the pull then sees less than the run's total arrive and reverts the
    ///      whole batch, so a swap can never be paid out before, or without, its own funds.
    /// @param terms The swaps, each with the terms lockTokens takes.
    function lockBatch(LockTerms[] calldata terms) external {
        uint256 n = terms.length;
        if (n == 0) revert BadBatch();
        address runToken = terms[0].token;
        uint256 runAmount;
        for (uint256 i; i < n; ++i) {
            LockTerms calldata t = terms[i];
            if (t.token != runToken) {
                _pull(runToken, msg.sender, runAmount);
                runToken = t.token;
                runAmount = 0;
            }
            _record(t.tradeId, msg.sender, t.token, t.amount, t.receiver, t.hashlock, t.timelock);
            unchecked {
                uint256 sum = runAmount + t.amount;
                if (sum < runAmount) revert BatchAmountOverflow(runToken);
                runAmount = sum;
            }
        }
        _pull(runToken, msg.sender, runAmount);
    }

    /// @notice Lock on behalf of `sender`, who authorised these exact terms with an EIP-712 signature.
    ///         The escrow pulls from `sender` (allowance needed, see lockWithPermit); funds can only go to
    ///         the receiver the sender signed for, or back to the sender: the submitter never has custody.
    /// @param t The terms the sender signed.
    /// @param sender Whose tokens are locked (the signer); names the swap with t.tradeId.
    /// @param deadline Last block timestamp at which the authorisation may be used.
    /// @param signature The sender's EIP-712 signature over Lock(t..., nonces(sender), deadline).
    function lockWithSig(LockTerms calldata t, address sender, uint256 deadline, bytes calldata signature)
        external
    {
        _checkLockSig(t, sender, deadline, signature);
        _record(t.tradeId, sender, t.token, t.amount, t.receiver, t.hashlock, t.timelock);
        _pull(t.token, sender, t.amount);
    }

    /// @notice lockWithSig preceded by an ERC-2612 permit for the escrow, so a holder with no allowance
    ///         needs to sign only. A permit already used (e.g. front-run) is ignored; the pull then decides.
    /// @param t The terms the sender signed.
    /// @param sender Whose tokens are locked (the signer).
    /// @param deadline Last block timestamp at which the lock authorisation may be used.
    /// @param signature The sender's EIP-712 Lock signature.
    /// @param permitDeadline The permit's deadline.
    /// @param v The permit signature's recovery id.
    /// @param r The permit signature's r.
    /// @param s The permit signature's s.
    function lockWithPermit(
        LockTerms calldata t,
        address sender,
        uint256 deadline,
        bytes calldata signature,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _checkLockSig(t, sender, deadline, signature);
        try IERC20Permit(t.token).permit(sender, address(this), t.amount, permitDeadline, v, r, s) {} catch {}
        _record(t.tradeId, sender, t.token, t.amount, t.receiver, t.hashlock, t.timelock);
        _pull(t.token, sender, t.amount);
    }

    // ----------------------------------------------------------------- claim

    /// @notice Pay the receiver by revealing the preimage, strictly before the timelock. The hashlock is not
    ///         passed: it is sha256(preimage), checked through the stored terms hash.
    /// @dev Named claimTokens rather than claim: its selector comes first in the dispatcher (see lockTokens).
    /// @param preimage The secret; its sha256 must be the swap's hashlock.
    /// @param id The swap's id, swapIdOf(sender, tradeId).
    /// @param token The locked token.
    /// @param amount The locked amount.
    /// @param receiver The receiver fixed in the lock (the only account a claim can pay).
    /// @param timelock The swap's timelock (a claim must land strictly before it).
    function claimTokens(bytes32 preimage, bytes32 id, address token, uint256 amount, address receiver,
                         uint64 timelock) external {
        _settle(preimage, id, token, amount, receiver, timelock);
        _pay(token, receiver, amount);
    }

    /// @notice Claim many swaps; all or nothing. Consecutive entries with the same token and receiver are
    ///         paid with a single transfer.
    /// @dev Order: each entry's slot is cleared before any transfer that pays it (a run is paid when the next
    ///      run starts, or at the end). A token re-entering the escrow during a transfer finds the swaps already
    ///      paid cleared (SwapNotActive); if it claims an entry further on, the batch's own claim of that entry
    ///      reverts with SwapNotActive and the whole batch with it. No swap is ever paid twice.
    /// @param cs The claims.
    function claimBatch(Claim[] calldata cs) external {
        uint256 n = cs.length;
        if (n == 0) revert BadBatch();
        address runToken = cs[0].token;
        address runTo = cs[0].receiver;
        uint256 runAmount;
        for (uint256 i; i < n; ++i) {
            Claim calldata c = cs[i];
            if (c.token != runToken || c.receiver != runTo) {
                _pay(runToken, runTo, runAmount);
                (runToken, runTo, runAmount) = (c.token, c.receiver, 0);
            }
            _settle(c.preimage, c.swapId, c.token, c.amount, c.receiver, c.timelock);
            runAmount += c.amount;
        }
        _pay(runToken, runTo, runAmount);
    }

    // ---------------------------------------------------------------- refund

    /// @notice Return the tokens to the sender once the timelock has passed. Anyone may call it.
    /// @param s Every term of the swap, as locked.
    function refund(Swap calldata s) external {
        _unwind(s);
        _pay(s.token, s.sender, s.amount);
    }

    /// @notice Refund many swaps; all or nothing. Consecutive entries with the same token and sender are
    ///         paid back with a single transfer.
    /// @dev Same order as claimBatch: slots are cleared before the transfers that pay them back.
    /// @param ss Every term of each swap, as locked.
    function refundBatch(Swap[] calldata ss) external {
        uint256 n = ss.length;
        if (n == 0) revert BadBatch();
        address runToken = ss[0].token;
        address runTo = ss[0].sender;
        uint256 runAmount;
        for (uint256 i; i < n; ++i) {
            Swap calldata s = ss[i];
            if (s.token != runToken || s.sender != runTo) {
                _pay(runToken, runTo, runAmount);
                (runToken, runTo, runAmount) = (s.token, s.sender, 0);
            }
            _unwind(s);
            runAmount += s.amount;
        }
        _pay(runToken, runTo, runAmount);
    }

    // ----------------------------------------------------------------- views

    /// @notice The id of the swap locked by `sender` for `tradeId`; also its storage slot.
    /// @param sender Who locked.
    /// @param tradeId The trade.
    /// @return id keccak256(abi.encode(SWAP_NAMESPACE, sender, tradeId)).
    function swapIdOf(address sender, bytes32 tradeId) public pure returns (bytes32 id) {
        assembly ("memory-safe") {
            let p := mload(0x40) // scratch above the free memory pointer, not allocated
            mstore(p, SWAP_NAMESPACE)
            mstore(add(p, 0x20), sender)
            mstore(add(p, 0x40), tradeId)
            id := keccak256(p, 0x60)
        }
    }

    /// @notice The value stored for a live swap with these terms.
    /// @param token The locked token.
    /// @param amount The locked amount.
    /// @param receiver The receiver.
    /// @param hashlock sha256 of the secret.
    /// @param timelock The timelock.
    /// @return h keccak256(abi.encode(token, amount, receiver, hashlock, timelock)).
    function termsHash(address token, uint256 amount, address receiver, bytes32 hashlock, uint64 timelock)
        public
        pure
        returns (bytes32 h)
    {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, token)
            mstore(add(p, 0x20), amount)
            mstore(add(p, 0x40), receiver)
            mstore(add(p, 0x60), hashlock)
            mstore(add(p, 0x80), timelock)
            h := keccak256(p, 0xa0)
        }
    }

    /// @notice The stored terms hash of a swap.
    /// @param id The swap's id.
    /// @return stored termsHash(...) of the live swap with this id, or zero when none is live.
    function swaps(bytes32 id) public view returns (bytes32 stored) {
        assembly ("memory-safe") {
            stored := sload(id)
        }
    }

    /// @notice Whether a swap is live with exactly these terms.
    /// @param s Every term of the swap.
    /// @return True while it is locked with these terms (neither claimed nor refunded).
    function isActive(Swap calldata s) external view returns (bool) {
        bytes32 stored = swaps(swapIdOf(s.sender, s.tradeId));
        return stored != bytes32(0) && stored == termsHash(s.token, s.amount, s.receiver, s.hashlock, s.timelock);
    }

    /// @notice EIP-712 domain separator of this escrow (for off-chain signers).
    /// @return The separator of domain {name: "DvpHashedTimelockEscrow", version: "1", chainId, this}.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // -------------------------------------------------------------- internal

    function _record(
        bytes32 tradeId,
        address sender,
        address token,
        uint256 amount,
        address receiver,
        bytes32 hashlock,
        uint64 timelock
    ) private {
        bool bad;
        assembly ("memory-safe") { // one branch for all five conditions (Solidity's || branches on each)
            bad := or(or(iszero(amount), iszero(hashlock)),
                          or(or(iszero(receiver), eq(receiver, address())), iszero(gt(timelock, timestamp()))))
        }
        if (bad) revert InvalidTerms(tradeId);
        bytes32 id = swapIdOf(sender, tradeId);
        bool taken;
        assembly ("memory-safe") {
            taken := iszero(iszero(sload(id)))
        }
        if (taken) revert SwapAlreadyExists(tradeId, sender);
        bytes32 topic = Locked.selector;
        assembly ("memory-safe") {
            // One memory layout serves both: the event's data is (sender, terms...), and the stored value is
            // the keccak of the terms, i.e. of the event data without its first word (see termsHash).
            let p := mload(0x40)
            mstore(p, sender)
            mstore(add(p, 0x20), token)
            mstore(add(p, 0x40), amount)
            mstore(add(p, 0x60), receiver)
            mstore(add(p, 0x80), hashlock)
            mstore(add(p, 0xa0), timelock)
            sstore(id, keccak256(add(p, 0x20), 0xa0))
            log2(p, 0xc0, topic, tradeId)
        }
    }

    /// @dev transferFrom with a balance check: rejects tokens that deliver less (or more) than asked. The
    ///      difference is taken unchecked and compared, so a balance that shrank is a named error, not a panic.
    function _pull(address token, address from, uint256 amount) private {
        uint256 before = _selfBalance(token);
        uint256 p;
        assembly ("memory-safe") {
            p := mload(0x40)
            mstore(p, 0x23b872dd) // transferFrom(address,address,uint256)
            mstore(add(p, 0x20), from)
            mstore(add(p, 0x40), address())
            mstore(add(p, 0x60), amount)
        }
        _tokenCall(token, p, 0x64);
        uint256 afterBal = _selfBalance(token);
        unchecked {
            if (afterBal - before != amount) {
                revert UnsupportedToken(token, amount, afterBal > before ? afterBal - before : 0);
            }
        }
    }

    /// @dev token.transfer(to, amount).
    function _pay(address token, address to, uint256 amount) private {
        uint256 p;
        assembly ("memory-safe") {
            p := mload(0x40)
            mstore(p, 0xa9059cbb) // transfer(address,uint256)
            mstore(add(p, 0x20), to)
            mstore(add(p, 0x40), amount)
        }
        _tokenCall(token, p, 0x44);
    }

    /// @dev Call `token` with the `size` bytes of calldata written at p + 28 (a selector in the low bytes of the
    ///      word at p, then the arguments), with SafeERC20's semantics: a revert is bubbled up; no return data is
    ///      success only if the token has code; return data must be true.
    function _tokenCall(address token, uint256 p, uint256 size) private {
        assembly ("memory-safe") {
            mstore(0x00, 0) // a short return must not be read together with what scratch held before
            if iszero(call(gas(), token, 0, add(p, 0x1c), size, 0x00, 0x20)) {
                returndatacopy(p, 0, returndatasize())
                revert(p, returndatasize())
            }
            let good := eq(mload(0x00), 1)
            if iszero(returndatasize()) { good := gt(extcodesize(token), 0) }
            if iszero(good) {
                mstore(0x00, 0xfecb69b4) // TokenCallFailed(address)
                mstore(0x20, token)
                revert(0x1c, 0x24)
            }
        }
    }

    /// @dev token.balanceOf(this) without the ABI round trip of a high-level call (runs twice per pull).
    function _selfBalance(address token) private view returns (uint256 bal) {
        assembly ("memory-safe") {
            mstore(0x00, 0x70a08231) // balanceOf(address)
            mstore(0x20, address())
            if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                mstore(0x00, 0xfecb69b4) // TokenCallFailed(address)
                mstore(0x20, token)
                revert(0x1c, 0x24)
            }
            bal := mload(0x00)
        }
    }

    /// @dev Consume a live swap by its preimage: the terms hash is built with hashlock = sha256(preimage), written
    ///      by the precompile straight into its place in the preimage of the hash.
    function _settle(bytes32 preimage, bytes32 id, address token, uint256 amount, address receiver, uint64 timelock)
        private
    {
        if (block.timestamp >= timelock) revert SwapExpired(id, timelock);
        bytes32 expected;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, token)
            mstore(add(p, 0x20), amount)
            mstore(add(p, 0x40), receiver)
            mstore(add(p, 0x80), timelock)
            mstore(0x00, preimage)
            if iszero(staticcall(gas(), 0x02, 0x00, 0x20, add(p, 0x60), 0x20)) { revert(0, 0) } // sha256 precompile
            expected := keccak256(p, 0xa0)
        }
        bytes32 stored;
        assembly ("memory-safe") {
            stored := sload(id)
        }
        if (stored == bytes32(0)) revert SwapNotActive(id);
        if (stored != expected) revert WrongPreimageOrTerms(id);
        bytes32 topic = Claimed.selector;
        assembly ("memory-safe") {
            sstore(id, 0)
            mstore(0x00, preimage) // written again: watchers take the secret from this event
            log2(0x00, 0x20, topic, id)
        }
    }

    /// @dev Consume a live swap whose timelock has passed, given every one of its terms.
    function _unwind(Swap calldata s) private {
        bytes32 id = swapIdOf(s.sender, s.tradeId);
        if (block.timestamp < s.timelock) revert SwapNotExpired(id, s.timelock);
        bytes32 expected = termsHash(s.token, s.amount, s.receiver, s.hashlock, s.timelock);
        bytes32 stored;
        assembly ("memory-safe") {
            stored := sload(id)
        }
        if (stored == bytes32(0)) revert SwapNotActive(id);
        if (stored != expected) revert TermsMismatch(id);
        bytes32 topic = Refunded.selector;
        assembly ("memory-safe") {
            sstore(id, 0)
            log2(0x00, 0x00, topic, id)
        }
    }

    function _checkLockSig(LockTerms calldata t, address sender, uint256 deadline, bytes calldata signature)
        private
    {
        if (block.timestamp > deadline) revert LockSignatureExpired(deadline);
        bytes32 structHash = keccak256(
            abi.encode(
                LOCK_TYPEHASH,
                t.tradeId,
                t.token,
                t.amount,
                t.receiver,
                t.hashlock,
                t.timelock,
                _useNonce(sender),
                deadline
            )
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_hashTypedDataV4(structHash), signature);
        if (err != ECDSA.RecoverError.NoError || signer != sender) revert InvalidLockSignature(sender);
    }
}
