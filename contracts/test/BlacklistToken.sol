// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DistToken} from "../DistToken.sol";

/// @title BlacklistToken
/// @notice A test ERC-20 (18 decimals) that reverts any transfer to or from a blacklisted
///         account with Blacklisted(account), as USDC and USDT do: the distribution tests'
///         recipient whose transfer reverts.
contract BlacklistToken is DistToken {
    mapping(address => bool) public blacklisted;

    error Blacklisted(address account);

    constructor() DistToken("Blacklist Test Token", "BLT") {}

    function setBlacklisted(address account, bool value) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        blacklisted[account] = value;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blacklisted[to]) revert Blacklisted(to);
        if (blacklisted[from]) revert Blacklisted(from);
        super._update(from, to, value);
    }
}
