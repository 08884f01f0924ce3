// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {PermissionedToken} from "./PermissionedToken.sol";

/// @title Stablecoin
/// @notice A bank-issued deposit token on the Progmat Coin ledger: the issuer mints on a fiat deposit and
///         a holder burns to redeem (withdraw to a bank account); only allowlisted holders.
contract Stablecoin is PermissionedToken {
    event Issued(address indexed to, uint256 amount, bytes32 indexed depositRef);
    event Redeemed(address indexed from, uint256 amount, bytes32 indexed withdrawalRef);

    constructor(string memory name_, string memory symbol_, uint8 decimals_, address issuer)
        PermissionedToken(name_, symbol_, decimals_, issuer)
    {}

    /// @notice Mint against a fiat deposit identified by `depositRef`.
    function issue(address to, uint256 amount, bytes32 depositRef) external onlyOwner {
        _mint(to, amount);
        emit Issued(to, amount, depositRef);
    }

    /// @notice Burn the caller's coins; the issuer pays out fiat against `withdrawalRef`.
    function redeem(uint256 amount, bytes32 withdrawalRef) external {
        _burn(msg.sender, amount);
        emit Redeemed(msg.sender, amount, withdrawalRef);
    }
}
