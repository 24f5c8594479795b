// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

// =========================================================
// The AI Oracle Interface (Node to Vault Communication)
// =========================================================
/**
 * @title IHoldAIProvider
 * @dev The core interface for the HodlAI Oracle Provider.
 *
 * Implementation Details:
 * 1. The `reason` function is payable. It must verify `msg.value >= getModelFee(model)`.
 *    If sufficient, the BNB fee is immediately routed to the HodlAI Treasury.
 * 2. It increments an internal `_requestId` counter and stores the request details
 *    (requester address, model, and pending status) in a mapping for verification.
 * 3. It immediately emits the `ReasoningRequested` event containing all the payload.
 * 4. The off-chain Node listens to this event, queries the LLM API, and calls back
 *    to `fulfillReason` on the original Vault requester using the stored `requestId`.
 */
interface IHoldAIProvider {
    /**
     * @dev Emitted when a Vault requests an AI reasoning task.
     * The off-chain oracle node listens to this event to trigger the LLM.
     */
    event HoldAI_ReasoningRequested(
        uint256 indexed requestId,
        address indexed requester,
        string model,
        string systemPrompt,
        string stateString,
        string[] actionSet
    );

    /**
     * @dev Emitted when the Oracle successfully fulfills a request back to the Vault.
     */
    event HoldAI_ReasoningFulfilled(
        uint256 indexed requestId,
        address indexed requester,
        string resultAction,
        string reasoningIpfsCid
    );

    /**
     * @dev Flap Vault Requests AI reasoning.
     * Must pay the required BNB fee with the transaction.
     *
     * String Length Constraints (to prevent gas bloat/griefing):
     * - `model`: Max 64 bytes.
     * - `systemPrompt`: Max 1024 bytes.
     * - `stateString`: Max 2048 bytes.
     * - `actionSet`: Max 10 items, each max 64 bytes.
     * These limits can be updated via administrative functions.
     */
    function reason(
        string calldata model,
        string calldata systemPrompt,
        string calldata stateString,
        string[] calldata actionSet
    ) external payable returns (uint256 requestId);

    /**
     * @dev Fetches current fee required for a specific AI model.
     */
    function getModelFee(string calldata model) external view returns (uint256);

    /**
     * @dev Called by the HodlAI off-chain Oracle Node (with ORACLE_ROLE)
     *      to fulfill the reasoning result and route it back to the Vault.
     */
    function fulfillNodeReasoning(
        uint256 requestId,
        string calldata resultAction,
        string calldata reasoningIpfsCid
    ) external;

    /**
     * @dev Returns the stored metadata for a given request.
     * Note: String payloads are NOT stored in contract state (emitted in events only).
     * Only the requester address, model name, and fulfillment status are tracked.
     *
     * @return requester   The Vault address that initiated the request.
     * @return model       The requested AI model.
     * @return isFulfilled True if the Node has already fulfilled this request.
     */
    function getRequestInfo(uint256 requestId) external view returns (
        address requester,
        string memory model,
        bool isFulfilled
    );

    // =========================================================
    // Administrative Config Methods (DEFAULT_ADMIN_ROLE only)
    // =========================================================

    /**
     * @dev Updates length constraints for the `reason()` inputs.
     */
    function setStringLimits(
        uint256 maxModelLen,
        uint256 maxPromptLen,
        uint256 maxStateLen,
        uint256 maxActionItems,
        uint256 maxActionLen
    ) external;

    /**
     * @dev Sets the minimum BNB fee required for a specific AI model.
     */
    function setModelFee(string calldata model, uint256 feeWei) external;
}
