// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {HoldAIRequesterBase} from "../HoldAIRequesterBase.sol";

/// @title CustomErrorVault
/// @notice Test vault whose callback always fails with a custom error carrying the answer.
contract CustomErrorVault is HoldAIRequesterBase {
    /// @notice The vault will not act on `action` for `requestId`.
    error DecisionRejected(uint256 requestId, string action);

    constructor(address provider_) HoldAIRequesterBase(provider_) {}

    function description() public pure override returns (string memory) {
        return "Test vault: reverts with a custom error";
    }

    function _onReasoning(uint256 requestId, string calldata action, string calldata)
        internal
        pure
        override
    {
        revert DecisionRejected(requestId, action);
    }
}
