// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {VaultBaseV2} from "./VaultBaseV2.sol";

// =========================================================
// The Vault Callback Interface (Oracle to Vault Fulfillment)
// =========================================================
/// @title HoldAIEnabledVaultBase
/// @notice Base of a Flap vault that asks the HodlAI oracle for decisions.
/// @dev Only the provider given at construction may deliver answers; everything a vault does
///      with an answer goes in `_onReasoning`.
abstract contract HoldAIEnabledVaultBase is VaultBaseV2 {
    /// @notice `fulfillReason` was called by someone other than the provider.
    error OnlyHoldAIProvider(address caller, address provider);

    /// @notice The HoldAIProvider this vault pays and accepts answers from.
    address public immutable provider;

    constructor(address provider_) {
        provider = provider_;
    }

    /**
     * @dev Oracle node calls this to fulfill the reasoning request.
     * Only the authorized Oracle Provider can call this.
     *
     * IMPORTANT GAS LIMIT:
     * The HodlAI Oracle Node will execute this callback with a strict gas limit
     * (e.g., maximum 1,000,000 gas). Vault developers MUST ensure that their
     * implementation of `fulfillReason` is highly optimized. Any execution
     * exceeding this limit will revert the Oracle's transaction, dropping the callback.
     *
     * @param requestId The unique ID of the original request.
     * @param resultAction The strictly constrained string chosen by the AI (from `actionSet`).
     * @param reasoningIpfsCid (Optional) The IPFS CID containing the AI's full reasoning trace.
     */
    function fulfillReason(
        uint256 requestId,
        string calldata resultAction,
        string calldata reasoningIpfsCid
    ) external virtual {
        if (msg.sender != provider) revert OnlyHoldAIProvider(msg.sender, provider);
        _onReasoning(requestId, resultAction, reasoningIpfsCid);
    }

    /// @dev Act on an answer. Runs inside the provider's callback gas cap.
    function _onReasoning(
        uint256 requestId,
        string calldata resultAction,
        string calldata reasoningIpfsCid
    ) internal virtual;
}
