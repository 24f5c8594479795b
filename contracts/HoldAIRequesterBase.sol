// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HoldAIEnabledVaultBase} from "./HoldAIEnabledVaultBase.sol";
import {IHoldAIProvider} from "./IHoldAIProvider.sol";
import {FieldDescriptor, ApproveAction, VaultMethodSchema, VaultUISchema} from "./IVaultSchemasV1.sol";

/// @title HoldAIRequesterBase
/// @notice A HodlAI-enabled vault that lets anyone ask the oracle a question, paying the fee.
/// @dev Shared by the example vault and the misbehaving test vaults, which differ only in what
///      `_onReasoning` does with the answer.
abstract contract HoldAIRequesterBase is HoldAIEnabledVaultBase {
    /// @notice `askBatch` was called with a count of zero.
    error EmptyBatch();
    /// @notice `askBatch`'s `msg.value` is not a whole multiple of `count`.
    error UnevenBatchPayment(uint256 value, uint256 count);

    constructor(address provider_) HoldAIEnabledVaultBase(provider_) {}

    /// @notice Ask the oracle to choose one of `actionSet`; `msg.value` is the fee.
    function ask(
        string calldata model,
        string calldata systemPrompt,
        string calldata stateString,
        string[] calldata actionSet
    ) external payable returns (uint256 requestId) {
        return IHoldAIProvider(provider).reason{value: msg.value}(
            model, systemPrompt, stateString, actionSet
        );
    }

    /// @notice Make `count` identical requests in one transaction, each paying
    ///         `msg.value / count`. Exists to produce many request events quickly (benchmarks).
    function askBatch(
        uint256 count,
        string calldata model,
        string calldata systemPrompt,
        string calldata stateString,
        string[] calldata actionSet
    ) external payable returns (uint256 firstRequestId, uint256 lastRequestId) {
        if (count == 0) revert EmptyBatch();
        if (msg.value % count != 0) revert UnevenBatchPayment(msg.value, count);
        uint256 fee = msg.value / count;
        IHoldAIProvider target = IHoldAIProvider(provider);
        firstRequestId = target.reason{value: fee}(model, systemPrompt, stateString, actionSet);
        lastRequestId = firstRequestId;
        for (uint256 i = 1; i < count; ++i) {
            lastRequestId = target.reason{value: fee}(model, systemPrompt, stateString, actionSet);
        }
    }

    /// @notice UI schema of the `ask` method.
    function vaultUISchema() public pure virtual override returns (VaultUISchema memory schema) {
        schema.vaultType = "HoldAIRequester";
        schema.description = "Asks the HodlAI oracle to choose one action; the fee is paid in the native coin.";
        schema.methods = new VaultMethodSchema[](1);
        schema.methods[0] = _askSchema();
    }

    function _askSchema() internal pure returns (VaultMethodSchema memory method) {
        method.name = "ask";
        method.description = "Request one AI decision; send the model's fee as value.";
        method.inputs = new FieldDescriptor[](4);
        method.inputs[0] = FieldDescriptor("model", "string", "HodlAI model name", 0);
        method.inputs[1] = FieldDescriptor("systemPrompt", "string", "Instructions for the model", 0);
        method.inputs[2] = FieldDescriptor("stateString", "string", "The state to decide on", 0);
        method.inputs[3] = FieldDescriptor("actionSet", "string[]", "Permitted answers", 0);
        method.outputs = new FieldDescriptor[](1);
        method.outputs[0] = FieldDescriptor("requestId", "uint256", "Oracle request id", 0);
        method.approvals = new ApproveAction[](0);
        method.isWriteMethod = true;
    }
}
