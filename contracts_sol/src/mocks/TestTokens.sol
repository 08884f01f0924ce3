// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Plain OpenZeppelin ERC-20 (the gas baseline of public HTLC measurements). Test-only.
contract PlainToken is ERC20 {
    constructor() ERC20("Plain", "PLN") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}

/// @notice Takes a 1% fee on every transfer: the escrow must reject it. Test-only.
contract FeeOnTransferToken is ERC20 {
    constructor() ERC20("Fee", "FEE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0)) {
            uint256 fee = value / 100;
            super._update(from, address(0xdead), fee);
            value -= fee;
        }
        super._update(from, to, value);
    }
}

/// @notice USDT-style token whose transfer functions return nothing. Test-only.
contract NoReturnToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    function approve(address spender, uint256 amount) external {
        allowance[msg.sender][spender] = amount;
    }

    function transfer(address to, uint256 amount) external {
        balanceOf[msg.sender] -= amount;
        balanceOf[to] += amount;
    }

    function transferFrom(address from, address to, uint256 amount) external {
        allowance[from][msg.sender] -= amount;
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
    }
}

/// @notice Re-enters the escrow from inside transfer/transferFrom with a call chosen by the test.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public reentered;

    constructor() ERC20("Reentrant", "REE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (target != address(0) && !reentered && from != address(0)) {
            reentered = true;
            (bool ok, bytes memory ret) = target.call(payload);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(ret, 0x20), mload(ret))
                }
            }
        }
    }
}

/// @notice Its transfer functions succeed (no revert) but return false: the escrow must treat that as failure.
/// Test-only.
contract FalseReturnToken is ERC20 {
    bool public lying;

    constructor() ERC20("False", "FLS") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setLying(bool on) external {
        lying = on;
    }

    function transfer(address to, uint256 amount) public override returns (bool) {
        super.transfer(to, amount);
        return !lying;
    }

    function transferFrom(address from, address to, uint256 amount) public override returns (bool) {
        super.transferFrom(from, to, amount);
        return !lying;
    }
}

/// @notice While armed, a transferFrom takes one unit away from the receiver instead of paying it: the escrow's
/// balance shrinks during a pull (its arithmetic must answer with a named error, not a panic). Test-only.
contract ShrinkingToken is ERC20 {
    bool public armed;

    constructor() ERC20("Shrink", "SHR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(bool on) external {
        armed = on;
    }

    function transferFrom(address from, address to, uint256 amount) public override returns (bool) {
        if (!armed) return super.transferFrom(from, to, amount);
        _update(to, address(0xdead), 1);
        return true;
    }
}

/// @notice Burns all the gas it is given: a block filler for congestion tests. Test-only.
contract GasBurner {
    /// @notice Loop until fewer than 3,000 gas remain.
    function burn() external view {
        while (gasleft() > 3000) {}
    }
}

/// @notice While armed, transfer moves nothing and returns one zero byte (a short "false"): the escrow must not
/// read it as success, whatever its scratch memory held before. Test-only.
contract ShortReturnToken is ERC20 {
    bool public armed;

    constructor() ERC20("Short", "SHT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(bool on) external {
        armed = on;
    }

    function transfer(address to, uint256 amount) public override returns (bool) {
        if (armed) {
            assembly ("memory-safe") {
                mstore(0x00, 0)
                return(0x00, 1)
            }
        }
        return super.transfer(to, amount);
    }
}
