// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {HoldAIRequesterBase} from "../HoldAIRequesterBase.sol";

/// @title RevertingVault
/// @notice Test vault whose callback fails with `Error(string)` (a `require` message) while
///         `refusing` is true, and records the answer once it is switched off.
contract RevertingVault is HoldAIRequesterBase {
    string public constant REFUSAL = "RevertingVault: answer refused";

    bool public refusing = true;
    uint256 public accepted;

    constructor(address provider_) HoldAIRequesterBase(provider_) {}

    /// @notice Switch the refusal on or off (lets a test show that a retry succeeds).
    function setRefusing(bool refusing_) external {
        refusing = refusing_;
    }

    function description() public pure override returns (string memory) {
        return "Test vault: reverts with a require message";
    }

    function _onReasoning(uint256, string calldata, string calldata) internal override {
        require(!refusing, REFUSAL);
        accepted += 1;
    }
}
