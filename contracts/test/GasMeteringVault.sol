// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {HoldAIRequesterBase} from "../HoldAIRequesterBase.sol";

/// @title GasMeteringVault
/// @notice Test vault that records how much gas its callback received, to prove the provider
///         hands every callback its full gas cap whatever gas the oracle's transaction carries.
contract GasMeteringVault is HoldAIRequesterBase {
    /// @notice `gasleft()` at the start of the callback for each request.
    mapping(uint256 requestId => uint256) public gasAtEntry;

    constructor(address provider_) HoldAIRequesterBase(provider_) {}

    function description() public pure override returns (string memory) {
        return "Test vault: records the gas its callback gets";
    }

    function _onReasoning(uint256 requestId, string calldata, string calldata) internal override {
        gasAtEntry[requestId] = gasleft();
    }
}
