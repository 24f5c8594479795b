// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title DistToken
/// @notice A plain ERC-20 with 18 decimals (OpenZeppelin's), for the devnet's distribution
///         executor and its tests: the token `hodlai devnet` deploys and funds the
///         distributor's source key with.
/// @dev Guarantees: only the owner (the deployer) mints; nothing else differs from
///      OpenZeppelin's ERC20 (custom errors ERC20InsufficientBalance and friends).
contract DistToken is ERC20 {
    address public immutable owner;

    error NotOwner(address caller);

    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) {
        owner = msg.sender;
    }

    function mint(address to, uint256 value) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _mint(to, value);
    }
}
