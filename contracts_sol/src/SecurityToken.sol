// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {PermissionedToken} from "./PermissionedToken.sol";

/// @title SecurityToken
/// @notice A digital security on the ST platform chain: whole units, issued by the issuer to allowlisted
///         investors, transferable only between allowlisted holders.
contract SecurityToken is PermissionedToken {
    event Issued(address indexed to, uint256 amount);

    constructor(string memory name_, string memory symbol_, address issuer)
        PermissionedToken(name_, symbol_, 0, issuer)
    {}

    /// @notice Issue new units to an allowlisted holder.
    function issue(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
        emit Issued(to, amount);
    }
}
