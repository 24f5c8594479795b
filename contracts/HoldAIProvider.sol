// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IHoldAIProvider} from "./IHoldAIProvider.sol";
import {HoldAIEnabledVaultBase} from "./HoldAIEnabledVaultBase.sol";

/// @title HoldAIProvider
/// @notice Takes paid reasoning requests from vaults and routes the oracle's answers back.
/// @dev Guarantees:
///  - Every rejected input reverts with a custom error, so the node can decode why.
///  - The whole fee (`msg.value`) reaches the treasury in the same transaction, or nothing
///    happens at all.
///  - A request is fulfilled at most once: it is marked fulfilled before the vault is called.
///  - The vault's callback always gets its full gas cap: a fulfilment transaction sent with too
///    little gas reverts with `InsufficientGasForCallback` instead of starving the callback
///    (the same exact-gas check as Chainlink VRF's coordinator).
///  - A failing callback fails the whole fulfilment (`CallbackReverted` with the vault's revert
///    data, or `CallbackOutOfGas`), so the request stays open and the node sees why.
contract HoldAIProvider is IHoldAIProvider, AccessControl {
    /// @notice Accounts allowed to call `fulfillNodeReasoning`.
    bytes32 public constant ORACLE_ROLE = keccak256("ORACLE_ROLE");

    /// @notice Callback gas cap a fresh deployment starts with: the limit the integration plan
    ///         promises vault developers.
    uint256 public constant DEFAULT_CALLBACK_GAS_LIMIT = 1_000_000;

    /// @dev Upper bound for `setCallbackGasLimit`, to catch an extra zero typed by an admin;
    ///      a cap near the block gas limit would make every fulfilment unsendable.
    uint256 public constant MAX_CALLBACK_GAS_LIMIT = 15_000_000;

    /// @dev Gas spent between the exact-gas check and the CALL opcode (the CALL itself with a
    ///      warm account, and the stack work around it), with room to spare. Chainlink uses the
    ///      same 5,000.
    uint256 private constant GAS_FOR_CALL_EXACT_CHECK = 5_000;

    /// @dev At most this many bytes of a vault's revert data are copied into
    ///      `CallbackReverted`: enough for an `Error(string)` of ~900 characters or any custom
    ///      error with a few arguments, and it keeps a vault from making the oracle pay for
    ///      copying megabytes of return data.
    uint256 private constant MAX_CALLBACK_REVERT_BYTES = 1024;

    // --- errors: reason() -------------------------------------------------------------------

    /// @notice The model has no fee set: the provider does not offer it.
    error ModelNotOffered(string model);
    /// @notice `msg.value` is below the model's fee.
    error InsufficientFee(string model, uint256 required, uint256 provided);
    /// @notice `field` ("model", "systemPrompt" or "stateString") is longer than allowed.
    error FieldTooLong(string field, uint256 length, uint256 maxLength);
    /// @notice The action set has no entries.
    error EmptyActionSet();
    /// @notice The action set has more entries than allowed.
    error TooManyActions(uint256 count, uint256 maxItems);
    /// @notice Action `index` of the action set is longer than allowed.
    error ActionTooLong(uint256 index, uint256 length, uint256 maxLength);
    /// @notice Action `index` is the empty string, which no model answer can name.
    error EmptyAction(uint256 index);
    /// @notice The treasury did not accept the fee.
    error TreasuryTransferFailed(address treasury, uint256 amount);

    // --- errors: fulfillNodeReasoning() -----------------------------------------------------

    /// @notice No request with this id was ever made.
    error UnknownRequest(uint256 requestId);
    /// @notice The request was fulfilled before.
    error AlreadyFulfilled(uint256 requestId);
    /// @notice The transaction carries too little gas to give the callback its full cap.
    error InsufficientGasForCallback(uint256 requestId, uint256 gasLeft, uint256 callbackGasLimit);
    /// @notice The vault's `fulfillReason` reverted; `reason` is its revert data (truncated to
    ///         1024 bytes).
    error CallbackReverted(uint256 requestId, bytes reason);
    /// @notice The vault's `fulfillReason` used up its whole gas cap.
    error CallbackOutOfGas(uint256 requestId, uint256 gasCap);

    // --- errors: administration -------------------------------------------------------------

    /// @notice The treasury may not be the zero address.
    error InvalidTreasury(address treasury);
    /// @notice A model name must be 1..maxModelLen bytes long.
    error InvalidModelName(string model);
    /// @notice The callback gas limit must be in 1..MAX_CALLBACK_GAS_LIMIT.
    error InvalidCallbackGasLimit(uint256 gasLimit);

    // --- events -----------------------------------------------------------------------------

    event ModelFeeSet(string model, uint256 feeWei);
    event ModelRemoved(string model);
    event StringLimitsSet(
        uint256 maxModelLen,
        uint256 maxPromptLen,
        uint256 maxStateLen,
        uint256 maxActionItems,
        uint256 maxActionLen
    );
    event TreasurySet(address indexed previousTreasury, address indexed newTreasury);
    event CallbackGasLimitSet(uint256 previousLimit, uint256 newLimit);

    // --- state ------------------------------------------------------------------------------

    struct Request {
        address requester;
        bool fulfilled;
        string model;
    }

    /// @dev `offered` is separate from the fee so that a fee of 0 is a valid, offered price.
    struct ModelPrice {
        uint256 feeWei;
        bool offered;
    }

    struct StringLimits {
        uint256 maxModelLen;
        uint256 maxPromptLen;
        uint256 maxStateLen;
        uint256 maxActionItems;
        uint256 maxActionLen;
    }

    mapping(uint256 requestId => Request) private _requests;
    mapping(string model => ModelPrice) private _prices;
    StringLimits private _limits;
    uint256 private _lastRequestId;

    /// @notice Where every fee goes.
    address payable public treasury;
    /// @notice Gas the vault's `fulfillReason` gets, exactly.
    uint256 public callbackGasLimit;

    constructor(address admin, address payable treasury_) {
        if (treasury_ == address(0)) revert InvalidTreasury(treasury_);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        treasury = treasury_;
        emit TreasurySet(address(0), treasury_);
        callbackGasLimit = DEFAULT_CALLBACK_GAS_LIMIT;
        emit CallbackGasLimitSet(0, DEFAULT_CALLBACK_GAS_LIMIT);
        _setStringLimits(64, 1024, 2048, 10, 64);
    }

    // --- requests ---------------------------------------------------------------------------

    /// @inheritdoc IHoldAIProvider
    function reason(
        string calldata model,
        string calldata systemPrompt,
        string calldata stateString,
        string[] calldata actionSet
    ) external payable returns (uint256 requestId) {
        // Shape first: an over-long model name is reported as such, not as "not offered".
        _checkInputs(model, systemPrompt, stateString, actionSet);
        ModelPrice storage price = _prices[model];
        if (!price.offered) revert ModelNotOffered(model);
        if (msg.value < price.feeWei) revert InsufficientFee(model, price.feeWei, msg.value);

        requestId = ++_lastRequestId;
        Request storage request = _requests[requestId];
        request.requester = msg.sender;
        request.model = model;
        emit HoldAI_ReasoningRequested(
            requestId, msg.sender, model, systemPrompt, stateString, actionSet
        );

        // Effects are done before this call, so a treasury that calls back in sees a
        // consistent state. The treasury is chosen by the admin, so it gets all gas.
        if (msg.value > 0) {
            address payable to = treasury;
            (bool ok, ) = to.call{value: msg.value}("");
            if (!ok) revert TreasuryTransferFailed(to, msg.value);
        }
    }

    /// @inheritdoc IHoldAIProvider
    function getModelFee(string calldata model) external view returns (uint256) {
        ModelPrice storage price = _prices[model];
        if (!price.offered) revert ModelNotOffered(model);
        return price.feeWei;
    }

    /// @notice Whether `model` can be requested.
    function isModelOffered(string calldata model) external view returns (bool) {
        return _prices[model].offered;
    }

    /// @inheritdoc IHoldAIProvider
    function getRequestInfo(uint256 requestId)
        external
        view
        returns (address requester, string memory model, bool isFulfilled)
    {
        Request storage request = _requests[requestId];
        return (request.requester, request.model, request.fulfilled);
    }

    /// @notice The id the most recent request got; 0 before the first request.
    function lastRequestId() external view returns (uint256) {
        return _lastRequestId;
    }

    /// @notice The id the next request will get. Ids start at 1.
    function nextRequestId() external view returns (uint256) {
        return _lastRequestId + 1;
    }

    // --- fulfilment -------------------------------------------------------------------------

    /// @inheritdoc IHoldAIProvider
    function fulfillNodeReasoning(
        uint256 requestId,
        string calldata resultAction,
        string calldata reasoningIpfsCid
    ) external onlyRole(ORACLE_ROLE) {
        Request storage request = _requests[requestId];
        address requester = request.requester;
        if (requester == address(0)) revert UnknownRequest(requestId);
        if (request.fulfilled) revert AlreadyFulfilled(requestId);
        // Marked before the call: a vault re-entering through any path cannot get a second
        // answer for the same request.
        request.fulfilled = true;

        // A requester without code (an EOA asking directly) reads the answer from the event;
        // calling it would succeed with no effect anyway. Reading the code size also warms the
        // account, which the exact-gas margin below relies on.
        if (requester.code.length > 0) {
            _callVault(
                requestId,
                requester,
                abi.encodeCall(
                    HoldAIEnabledVaultBase.fulfillReason,
                    (requestId, resultAction, reasoningIpfsCid)
                )
            );
        }
        emit HoldAI_ReasoningFulfilled(requestId, requester, resultAction, reasoningIpfsCid);
    }

    /// @dev Calls the vault with exactly `callbackGasLimit` gas and turns every failure into a
    ///      revert of the whole fulfilment.
    function _callVault(uint256 requestId, address vault, bytes memory data) private {
        uint256 gasCap = callbackGasLimit;
        bool enoughGas;
        bool success;
        uint256 gasBefore;
        uint256 gasAfter;
        // The check and the call sit together in assembly so that the gas between them is
        // small and known (covered by GAS_FOR_CALL_EXACT_CHECK). After the CALL's own cost,
        // at most 63/64 of the remaining gas can be forwarded (EIP-150); if that is less than
        // the cap, the callee would silently get less, so refuse instead.
        assembly ("memory-safe") {
            gasBefore := gas()
            if gt(gasBefore, GAS_FOR_CALL_EXACT_CHECK) {
                let available := sub(gasBefore, GAS_FOR_CALL_EXACT_CHECK)
                enoughGas := gt(sub(available, div(available, 64)), gasCap)
            }
            if enoughGas {
                success := call(gasCap, vault, 0, add(data, 0x20), mload(data), 0, 0)
                gasAfter := gas()
            }
        }
        if (!enoughGas) revert InsufficientGasForCallback(requestId, gasBefore, gasCap);
        if (success) return;

        // An out-of-gas callee returns no data and has burnt at least its whole cap. The gas
        // measured around the call also includes the CALL's own few thousand gas, so a callee
        // that reverts with empty data within that distance of the cap also counts as out of
        // gas; for the node both mean "this vault needs more gas than it gets".
        uint256 size;
        assembly ("memory-safe") {
            size := returndatasize()
        }
        if (size == 0 && gasBefore - gasAfter >= gasCap) {
            revert CallbackOutOfGas(requestId, gasCap);
        }
        if (size > MAX_CALLBACK_REVERT_BYTES) size = MAX_CALLBACK_REVERT_BYTES;
        bytes memory reasonData = new bytes(size);
        assembly ("memory-safe") {
            returndatacopy(add(reasonData, 0x20), 0, size)
        }
        revert CallbackReverted(requestId, reasonData);
    }

    // --- administration ---------------------------------------------------------------------

    /// @inheritdoc IHoldAIProvider
    function setModelFee(string calldata model, uint256 feeWei)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        // A name no request could carry would be a price nobody can pay.
        uint256 length = bytes(model).length;
        if (length == 0 || length > _limits.maxModelLen) revert InvalidModelName(model);
        _prices[model] = ModelPrice({feeWei: feeWei, offered: true});
        emit ModelFeeSet(model, feeWei);
    }

    /// @notice Stop offering `model`. Requests already made for it can still be fulfilled.
    function removeModel(string calldata model) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!_prices[model].offered) revert ModelNotOffered(model);
        delete _prices[model];
        emit ModelRemoved(model);
    }

    /// @inheritdoc IHoldAIProvider
    function setStringLimits(
        uint256 maxModelLen,
        uint256 maxPromptLen,
        uint256 maxStateLen,
        uint256 maxActionItems,
        uint256 maxActionLen
    ) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setStringLimits(maxModelLen, maxPromptLen, maxStateLen, maxActionItems, maxActionLen);
    }

    /// @notice The current input limits of `reason()`, in bytes (items for `maxActionItems`).
    function getStringLimits()
        external
        view
        returns (
            uint256 maxModelLen,
            uint256 maxPromptLen,
            uint256 maxStateLen,
            uint256 maxActionItems,
            uint256 maxActionLen
        )
    {
        StringLimits storage limits = _limits;
        return (
            limits.maxModelLen,
            limits.maxPromptLen,
            limits.maxStateLen,
            limits.maxActionItems,
            limits.maxActionLen
        );
    }

    /// @notice Send future fees to `newTreasury`.
    function setTreasury(address payable newTreasury) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newTreasury == address(0)) revert InvalidTreasury(newTreasury);
        emit TreasurySet(treasury, newTreasury);
        treasury = newTreasury;
    }

    /// @notice Give every future callback exactly `newLimit` gas.
    function setCallbackGasLimit(uint256 newLimit) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newLimit == 0 || newLimit > MAX_CALLBACK_GAS_LIMIT) {
            revert InvalidCallbackGasLimit(newLimit);
        }
        emit CallbackGasLimitSet(callbackGasLimit, newLimit);
        callbackGasLimit = newLimit;
    }

    // --- internals --------------------------------------------------------------------------

    function _setStringLimits(
        uint256 maxModelLen,
        uint256 maxPromptLen,
        uint256 maxStateLen,
        uint256 maxActionItems,
        uint256 maxActionLen
    ) private {
        _limits = StringLimits(maxModelLen, maxPromptLen, maxStateLen, maxActionItems, maxActionLen);
        emit StringLimitsSet(maxModelLen, maxPromptLen, maxStateLen, maxActionItems, maxActionLen);
    }

    function _checkInputs(
        string calldata model,
        string calldata systemPrompt,
        string calldata stateString,
        string[] calldata actionSet
    ) private view {
        StringLimits memory limits = _limits;
        if (bytes(model).length > limits.maxModelLen) {
            revert FieldTooLong("model", bytes(model).length, limits.maxModelLen);
        }
        if (bytes(systemPrompt).length > limits.maxPromptLen) {
            revert FieldTooLong("systemPrompt", bytes(systemPrompt).length, limits.maxPromptLen);
        }
        if (bytes(stateString).length > limits.maxStateLen) {
            revert FieldTooLong("stateString", bytes(stateString).length, limits.maxStateLen);
        }
        uint256 count = actionSet.length;
        if (count == 0) revert EmptyActionSet();
        if (count > limits.maxActionItems) revert TooManyActions(count, limits.maxActionItems);
        for (uint256 i = 0; i < count; ++i) {
            uint256 length = bytes(actionSet[i]).length;
            if (length == 0) revert EmptyAction(i);
            if (length > limits.maxActionLen) {
                revert ActionTooLong(i, length, limits.maxActionLen);
            }
        }
    }
}
