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
/// @dev    Storage: the only declared state is EIP712's two fallback strings (slots 0 and 1; a long value's
///         bytes at keccak256 of the slot, a 32-byte preimage). A "settled" flag lives at the slot equal to the
///         EIP-712 digest keccak256(0x1901 || domainSeparator || structHash): a keccak of 66 bytes, a preimage
///         length no Solidity-assigned slot uses (those are small integers or keccaks of 32 or 64 bytes), so no
///         declared, inherited or future variable can share a slot with a settlement short of a keccak collision.
///         tests/test_storage_layout.py fails when a state variable is added without saying why it cannot collide.
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

    /// @notice EIP-712 type of the terms both parties sign.
    bytes32 public constant TERMS_TYPEHASH = keccak256(
        "DvP(bytes32 tradeId,address seller,address buyer,address stToken,uint256 stAmount,address scToken,uint256 scAmount,uint64 deadline)"
    );

    /// @notice Both legs of the trade moved; `digest` names the exact terms that settled.
    /// @dev tradeId indexed so watchers filter by trade; the digest says which terms settled.
    event Settled(bytes32 indexed tradeId, bytes32 digest);

    /// @notice The block timestamp is at or after the terms' deadline.
    error Expired(bytes32 tradeId, uint64 deadline);
    /// @notice These exact terms have settled already (replay).
    error AlreadySettled(bytes32 digest);
    /// @notice `party` neither signed these terms nor is the caller.
    error NotAuthorised(bytes32 tradeId, address party);
    /// @notice Seller and buyer are the same account.
    error SameParty(bytes32 tradeId);
    /// @notice settleBatch got no entries (as the escrow's batches, an empty batch is refused, not a no-op).
    error BadBatch();

    constructor() EIP712("DvpAtomicSettlement", "1") {}

    /// @notice Settle one trade: both legs move in this transaction, or nothing does.
    /// @param t The terms both parties authorised.
    /// @param sellerSig The seller's EIP-712 signature over digest(t), or empty when the seller is the caller.
    /// @param buyerSig The buyer's EIP-712 signature over digest(t), or empty when the buyer is the caller.
    function settle(Terms calldata t, bytes calldata sellerSig, bytes calldata buyerSig) external {
        _settle(t, sellerSig, buyerSig);
    }

    /// @notice Settle several trades in one transaction, all or nothing.
    /// @dev Each trade's "settled" flag is set before its two token transfers, so a token re-entering with the
    ///      same terms finds them settled (AlreadySettled) and the whole batch reverts.
    /// @param items The trades, each with its terms and both authorisations.
    function settleBatch(Settlement[] calldata items) external {
        uint256 n = items.length;
        if (n == 0) revert BadBatch();
        for (uint256 i; i < n; ++i) {
            _settle(items[i].terms, items[i].sellerSig, items[i].buyerSig);
        }
    }

    /// @notice The EIP-712 digest both parties sign for `t`; also the settlement's key.
    /// @param t The terms.
    /// @return The digest (and the storage slot of the terms' "settled" flag).
    function digest(Terms calldata t) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(TERMS_TYPEHASH, t)));
    }

    /// @notice Whether the terms with this digest have settled.
    /// @param termsDigest digest(terms).
    /// @return done True once they settled.
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
