// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DistToken} from "../DistToken.sol";

/// @title FeeToken
/// @notice A test ERC-20 (18 decimals) that charges a fee on every transfer between accounts
///         (mints excepted): the recipient receives value minus feeBps / 10,000 of it, the fee
///         goes to the owner. The Transfer logs show what each account actually received.
contract FeeToken is DistToken {
    uint256 public constant feeBps = 100; // 1 %

    constructor() DistToken("Fee Test Token", "FEE") {}

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = (value * feeBps) / 10_000;
        super._update(from, owner, fee);
        super._update(from, to, value - fee);
    }
}
