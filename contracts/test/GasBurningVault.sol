// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {HoldAIRequesterBase} from "../HoldAIRequesterBase.sol";

/// @title GasBurningVault
/// @notice Test vault whose callback writes storage until it runs out of gas, whatever the cap.
contract GasBurningVault is HoldAIRequesterBase {
    mapping(uint256 slot => uint256) private _sink;

    constructor(address provider_) HoldAIRequesterBase(provider_) {}

    function description() public pure override returns (string memory) {
        return "Test vault: burns all the gas its callback gets";
    }

    function _onReasoning(uint256 requestId, string calldata, string calldata) internal override {
        // Fresh storage slots cost 22,100 gas each, so any finite cap is used up quickly.
        for (uint256 i = requestId; ; ++i) {
            _sink[i] = i + 1;
        }
    }
}
