// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title FalseToken
/// @notice A broken test "ERC-20" whose transferFrom and transfer move nothing and returns false, the
///         non-reverting failure some old tokens signal: Multisend must refuse it
///         (TransferFailed) rather than count the recipient paid.
contract FalseToken {
    uint8 public constant decimals = 18;

    function balanceOf(address) external pure returns (uint256) {
        return 0;
    }

    function transferFrom(address, address, uint256) external pure returns (bool) {
        return false;
    }

    function transfer(address, uint256) external pure returns (bool) {
        return false;
    }
}
