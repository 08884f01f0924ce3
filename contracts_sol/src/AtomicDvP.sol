// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title AtomicDvP
/// @notice Same-ledger fast path: when the security token and the stablecoin live on ONE chain, a trade
///         settles in one transaction that moves both legs or reverts as a whole. No hashlock, no secret,
///         no timelock. Each party authorises the exact terms with an EIP-712 signature (or by being the
///         caller, with an empty signature); anyone may submit. Both parties approve this contract once.
///         Replay: a settlement is keyed by its terms digest (a keccak), stored at the storage slot equal to
///         the digest itself, so the same signed terms settle at most once, and nobody can block a trade by
///         settling other terms under its trade id (that would need both parties' signatures).
contract AtomicDvP is EIP712 {
    using SafeERC20 for IERC20;

    /// @notice What both parties sign: the seller delivers stAmount of stToken, the buyer pays scAmount of
    ///         scToken, before `deadline` (a block timestamp).
    struct Terms {
        bytes32 tradeId;
        address seller;
        address buyer;
        address stToken;
        uint256 stAmount;
        address scToken;
        uint256 scAmount;
        uint64 deadline;
    }

    /// @notice One entry of a batch: terms and the two authorisations.
    struct Settlement {
        Terms terms;
        bytes sellerSig;
        bytes buyerSig;
    }

    bytes32 public constant TERMS_TYPEHASH = keccak256(
        "DvP(bytes32 tradeId,address seller,address buyer,address stToken,uint256 stAmount,address scToken,uint256 scAmount,uint64 deadline)"
    );

    /// @dev tradeId indexed so watchers filter by trade; the digest says which terms settled.
    event Settled(bytes32 indexed tradeId, bytes32 digest);

    error Expired(bytes32 tradeId, uint64 deadline);
    error AlreadySettled(bytes32 digest);
    error NotAuthorised(bytes32 tradeId, address party);
    error SameParty(bytes32 tradeId);

    constructor() EIP712("DvpAtomicSettlement", "1") {}

    /// @notice Settle one trade: both legs move in this transaction, or nothing does.
    function settle(Terms calldata t, bytes calldata sellerSig, bytes calldata buyerSig) external {
        _settle(t, sellerSig, buyerSig);
    }

    /// @notice Settle several trades in one transaction, all or nothing.
    function settleBatch(Settlement[] calldata items) external {
        for (uint256 i; i < items.length; ++i) {
            _settle(items[i].terms, items[i].sellerSig, items[i].buyerSig);
        }
    }

    /// @notice The EIP-712 digest both parties sign for `t`; also the settlement's key.
    function digest(Terms calldata t) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(TERMS_TYPEHASH, t)));
    }

    /// @notice True once the terms with this digest have settled.
    function settled(bytes32 termsDigest) external view returns (bool done) {
        assembly ("memory-safe") {
            done := sload(termsDigest)
        }
    }

    function _settle(Terms calldata t, bytes calldata sellerSig, bytes calldata buyerSig) private {
        if (block.timestamp >= t.deadline) revert Expired(t.tradeId, t.deadline);
        if (t.seller == t.buyer) revert SameParty(t.tradeId);
        bytes32 d = digest(t);
        bool done;
        assembly ("memory-safe") {
            done := sload(d)
        }
        if (done) revert AlreadySettled(d);
        _requireAuthorised(t.tradeId, t.seller, d, sellerSig);
        _requireAuthorised(t.tradeId, t.buyer, d, buyerSig);
        assembly ("memory-safe") {
            sstore(d, 1)
        }
        emit Settled(t.tradeId, d);
        IERC20(t.stToken).safeTransferFrom(t.seller, t.buyer, t.stAmount);
        IERC20(t.scToken).safeTransferFrom(t.buyer, t.seller, t.scAmount);
    }

    function _requireAuthorised(bytes32 tradeId, address party, bytes32 d, bytes calldata sig) private view {
        if (sig.length == 0 && msg.sender == party) return;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(d, sig);
        if (err != ECDSA.RecoverError.NoError || signer != party) revert NotAuthorised(tradeId, party);
    }
}
