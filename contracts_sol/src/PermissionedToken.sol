// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title PermissionedToken
/// @notice Issuer-controlled ERC-20 base: only allowlisted (KYC'd) holders may send or receive, the issuer
///         can pause every transfer, and ERC-2612 permit lets holders authorise with a signature.
abstract contract PermissionedToken is ERC20, ERC20Permit, Pausable, Ownable {
    uint8 private immutable _decimals;

    /// @notice KYC allowlist: holder => may hold and transfer.
    mapping(address holder => bool) public isAllowed;

    event AllowlistUpdated(address indexed holder, bool allowed);

    /// @notice The holder is not on the issuer's allowlist.
    error HolderNotAllowed(address holder);

    constructor(string memory name_, string memory symbol_, uint8 decimals_, address issuer)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
        Ownable(issuer)
    {
        _decimals = decimals_;
    }

    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    /// @notice Add or remove holders from the allowlist (the escrow must be allowed too).
    function setAllowed(address[] calldata holders, bool allowed) external onlyOwner {
        for (uint256 i; i < holders.length; ++i) {
            isAllowed[holders[i]] = allowed;
            emit AllowlistUpdated(holders[i], allowed);
        }
    }

    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    /// @dev Every movement (mint, burn, transfer) passes here: enforce pause and the allowlist.
    function _update(address from, address to, uint256 value) internal override whenNotPaused {
        if (from != address(0) && !isAllowed[from]) revert HolderNotAllowed(from);
        if (to != address(0) && !isAllowed[to]) revert HolderNotAllowed(to);
        super._update(from, to, value);
    }
}
