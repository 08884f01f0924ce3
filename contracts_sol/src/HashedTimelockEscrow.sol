// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
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
contract HashedTimelockEscrow is EIP712, Nonces {
    using SafeERC20 for IERC20;

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

    bytes32 public constant LOCK_TYPEHASH = keccak256(
        "Lock(bytes32 tradeId,address token,uint256 amount,address receiver,bytes32 hashlock,uint64 timelock,uint256 nonce,uint256 deadline)"
    );

    // Storage: the swap's terms hash lives at storage slot `swapId(sender, tradeId)` itself (a keccak, so it
    // cannot collide with the few fixed slots of EIP712/Nonces). No mapping: one keccak less per operation.

    /// @dev Only tradeId is indexed (watchers filter by trade); each extra topic would cost 119 gas per lock.
    event Locked(
        bytes32 indexed tradeId,
        address sender,
        address receiver,
        address token,
        uint256 amount,
        bytes32 hashlock,
        uint64 timelock
    );
    /// @dev Claimed and Refunded name the swap by id = swapId(sender, tradeId), which watchers compute.
    event Claimed(bytes32 indexed swapId, bytes32 preimage);
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
    /// @notice Amount zero, receiver zero, zero hashlock or a timelock not in the future.
    error InvalidTerms(bytes32 tradeId);
    /// @notice The escrow received a different amount than it pulled (fee-on-transfer or rebasing token).
    error UnsupportedToken(address token, uint256 expected, uint256 received);
    /// @notice The EIP-712 lock signature is not the sender's, or was made for another nonce.
    error InvalidLockSignature(address sender);
    /// @notice The EIP-712 lock authorisation has passed its deadline.
    error LockSignatureExpired(uint256 deadline);
    /// @notice A batch call got arrays of different lengths, or none.
    error BadBatch();

    constructor() EIP712("DvpHashedTimelockEscrow", "1") {}

    // ------------------------------------------------------------------ lock

    /// @notice Lock `amount` of `token` from msg.sender for `receiver` until `timelock`.
    function lock(
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
            runAmount += t.amount;
        }
        _pull(runToken, msg.sender, runAmount);
    }

    /// @notice Lock on behalf of `sender`, who authorised these exact terms with an EIP-712 signature.
    ///         The escrow pulls from `sender` (allowance needed, see lockWithPermit); funds can only go to
    ///         the receiver the sender signed for, or back to the sender: the submitter never has custody.
    function lockWithSig(LockTerms calldata t, address sender, uint256 deadline, bytes calldata signature)
        external
       
    {
        _checkLockSig(t, sender, deadline, signature);
        _record(t.tradeId, sender, t.token, t.amount, t.receiver, t.hashlock, t.timelock);
        _pull(t.token, sender, t.amount);
    }

    /// @notice lockWithSig preceded by an ERC-2612 permit for the escrow, so a holder with no allowance
    ///         needs to sign only. A permit already used (e.g. front-run) is ignored; the pull then decides.
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
    function claim(bytes32 preimage, bytes32 id, address token, uint256 amount, address receiver, uint64 timelock)
        external
       
    {
        _settle(preimage, id, token, amount, receiver, timelock);
        IERC20(token).safeTransfer(receiver, amount);
    }

    /// @notice Claim many swaps; all or nothing. Consecutive entries with the same token and receiver are
    ///         paid with a single transfer.
    function claimBatch(Claim[] calldata cs) external {
        uint256 n = cs.length;
        if (n == 0) revert BadBatch();
        address runToken = cs[0].token;
        address runTo = cs[0].receiver;
        uint256 runAmount;
        for (uint256 i; i < n; ++i) {
            Claim calldata c = cs[i];
            if (c.token != runToken || c.receiver != runTo) {
                IERC20(runToken).safeTransfer(runTo, runAmount);
                (runToken, runTo, runAmount) = (c.token, c.receiver, 0);
            }
            _settle(c.preimage, c.swapId, c.token, c.amount, c.receiver, c.timelock);
            runAmount += c.amount;
        }
        IERC20(runToken).safeTransfer(runTo, runAmount);
    }

    // ---------------------------------------------------------------- refund

    /// @notice Return the tokens to the sender once the timelock has passed. Anyone may call it.
    function refund(Swap calldata s) external {
        _unwind(s);
        IERC20(s.token).safeTransfer(s.sender, s.amount);
    }

    /// @notice Refund many swaps; all or nothing. Consecutive entries with the same token and sender are
    ///         paid back with a single transfer.
    function refundBatch(Swap[] calldata ss) external {
        uint256 n = ss.length;
        if (n == 0) revert BadBatch();
        address runToken = ss[0].token;
        address runTo = ss[0].sender;
        uint256 runAmount;
        for (uint256 i; i < n; ++i) {
            Swap calldata s = ss[i];
            if (s.token != runToken || s.sender != runTo) {
                IERC20(runToken).safeTransfer(runTo, runAmount);
                (runToken, runTo, runAmount) = (s.token, s.sender, 0);
            }
            _unwind(s);
            runAmount += s.amount;
        }
        IERC20(runToken).safeTransfer(runTo, runAmount);
    }

    // ----------------------------------------------------------------- views

    /// @notice The storage key of the swap locked by `sender` for `tradeId`.
    function swapId(address sender, bytes32 tradeId) public pure returns (bytes32 id) {
        assembly ("memory-safe") {
            mstore(0x00, sender)
            mstore(0x20, tradeId)
            id := keccak256(0x00, 0x40)
        }
    }

    /// @notice The value stored for a live swap with these terms.
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

    /// @notice keccak256(token, amount, receiver, hashlock, timelock) of the live swap, or zero.
    function swaps(bytes32 id) public view returns (bytes32 stored) {
        assembly ("memory-safe") {
            stored := sload(id)
        }
    }

    /// @notice True while the swap is locked with exactly these terms (neither claimed nor refunded).
    function isActive(Swap calldata s) external view returns (bool) {
        bytes32 stored = swaps(swapId(s.sender, s.tradeId));
        return stored != bytes32(0) && stored == termsHash(s.token, s.amount, s.receiver, s.hashlock, s.timelock);
    }

    /// @notice EIP-712 domain separator of this escrow (for off-chain signers).
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
        if (amount == 0 || receiver == address(0) || hashlock == bytes32(0) || timelock <= block.timestamp) {
            revert InvalidTerms(tradeId);
        }
        bytes32 id = swapId(sender, tradeId);
        if (swaps(id) != bytes32(0)) revert SwapAlreadyExists(tradeId, sender);
        bytes32 h = termsHash(token, amount, receiver, hashlock, timelock);
        assembly ("memory-safe") {
            sstore(id, h)
        }
        emit Locked(tradeId, sender, receiver, token, amount, hashlock, timelock);
    }

    /// @dev transferFrom with a balance check: rejects tokens that deliver less (or more) than asked.
    function _pull(address token, address from, uint256 amount) private {
        uint256 before = _selfBalance(token);
        IERC20(token).safeTransferFrom(from, address(this), amount);
        uint256 received = _selfBalance(token) - before;
        if (received != amount) revert UnsupportedToken(token, amount, received);
    }

    /// @dev token.balanceOf(this) without the ABI round trip of a high-level call (runs twice per pull).
    function _selfBalance(address token) private view returns (uint256 bal) {
        assembly ("memory-safe") {
            mstore(0x00, 0x70a08231) // balanceOf(address)
            mstore(0x20, address())
            if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                revert(0, 0)
            }
            bal := mload(0x00)
        }
    }

    /// @dev Clear the slot of a live swap whose stored terms hash equals `expected`; false if it differs.
    function _consume(bytes32 id, bytes32 expected) private returns (bool matched) {
        bytes32 stored = swaps(id);
        if (stored == bytes32(0)) revert SwapNotActive(id);
        matched = stored == expected;
        if (matched) {
            assembly ("memory-safe") {
                sstore(id, 0)
            }
        }
    }

    function _settle(bytes32 preimage, bytes32 id, address token, uint256 amount, address receiver, uint64 timelock)
        private
    {
        if (block.timestamp >= timelock) revert SwapExpired(id, timelock);
        bytes32 hashlock;
        assembly ("memory-safe") {
            mstore(0x00, preimage)
            if iszero(staticcall(gas(), 0x02, 0x00, 0x20, 0x00, 0x20)) { revert(0, 0) } // sha256 precompile
            hashlock := mload(0x00)
        }
        if (!_consume(id, termsHash(token, amount, receiver, hashlock, timelock))) revert WrongPreimageOrTerms(id);
        emit Claimed(id, preimage);
    }

    function _unwind(Swap calldata s) private {
        bytes32 id = swapId(s.sender, s.tradeId);
        if (block.timestamp < s.timelock) revert SwapNotExpired(id, s.timelock);
        if (!_consume(id, termsHash(s.token, s.amount, s.receiver, s.hashlock, s.timelock))) revert TermsMismatch(id);
        emit Refunded(id);
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
