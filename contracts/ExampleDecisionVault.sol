// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {HoldAIRequesterBase} from "./HoldAIRequesterBase.sol";
import {IHoldAIProvider} from "./IHoldAIProvider.sol";
import {FieldDescriptor, ApproveAction, VaultMethodSchema, VaultUISchema} from "./IVaultSchemasV1.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

/// @title ExampleDecisionVault
/// @notice A minimal HodlAI vault: anyone may ask for a BUY/SELL/HOLD-style decision, and every
///         answer the oracle delivers is recorded, with a count of deliveries per request so
///         that "answered exactly once" can be checked on chain.
contract ExampleDecisionVault is HoldAIRequesterBase {
    struct Decision {
        string action;
        string cid;
        bool received;
    }

    /// @notice Emitted for every delivery, including (if it ever happened) a repeated one.
    event DecisionReceived(uint256 indexed requestId, string action, string cid);

    /// @notice Model and prompt `askDefault` uses.
    string public defaultModel;
    string public defaultSystemPrompt;

    mapping(uint256 requestId => Decision) private _decisions;
    mapping(uint256 requestId => uint256) private _deliveries;
    uint256[] private _answeredIds;

    constructor(address provider_, string memory defaultModel_, string memory defaultSystemPrompt_)
        HoldAIRequesterBase(provider_)
    {
        defaultModel = defaultModel_;
        defaultSystemPrompt = defaultSystemPrompt_;
    }

    /// @notice Flap vaults must accept the native coin (tax revenue arrives this way).
    receive() external payable {}

    /// @notice Ask with the default model and prompt to choose BUY, SELL or HOLD.
    function askDefault(string calldata stateString) external payable returns (uint256 requestId) {
        string[] memory actions = new string[](3);
        actions[0] = "BUY";
        actions[1] = "SELL";
        actions[2] = "HOLD";
        return IHoldAIProvider(provider).reason{value: msg.value}(
            defaultModel, defaultSystemPrompt, stateString, actions
        );
    }

    /// @notice The first answer delivered for `requestId`.
    function decisionOf(uint256 requestId)
        external
        view
        returns (string memory action, string memory cid, bool received)
    {
        Decision storage decision = _decisions[requestId];
        return (decision.action, decision.cid, decision.received);
    }

    /// @notice How many times an answer for `requestId` was delivered (1 when all is well).
    function deliveriesOf(uint256 requestId) external view returns (uint256) {
        return _deliveries[requestId];
    }

    /// @notice How many distinct requests have been answered.
    function answerCount() external view returns (uint256) {
        return _answeredIds.length;
    }

    /// @notice The `index`-th answered request id, in order of delivery.
    function answeredIdAt(uint256 index) external view returns (uint256) {
        return _answeredIds[index];
    }

    /// @notice How many decisions the vault has received.
    function description() public view override returns (string memory) {
        return string.concat(
            "HodlAI example decision vault: ",
            Strings.toString(_answeredIds.length),
            " decisions received"
        );
    }

    /// @notice UI schema of `ask`, `askDefault` and `decisionOf`.
    function vaultUISchema() public pure override returns (VaultUISchema memory schema) {
        schema.vaultType = "HoldAIExampleDecisionVault";
        schema.description = "Asks the HodlAI oracle for BUY / SELL / HOLD decisions and records every answer.";
        schema.methods = new VaultMethodSchema[](3);
        schema.methods[0] = _askSchema();

        VaultMethodSchema memory askDefaultMethod = schema.methods[1];
        askDefaultMethod.name = "askDefault";
        askDefaultMethod.description = "Request a BUY / SELL / HOLD decision with the default model.";
        askDefaultMethod.inputs = new FieldDescriptor[](1);
        askDefaultMethod.inputs[0] = FieldDescriptor("stateString", "string", "The state to decide on", 0);
        askDefaultMethod.outputs = new FieldDescriptor[](1);
        askDefaultMethod.outputs[0] = FieldDescriptor("requestId", "uint256", "Oracle request id", 0);
        askDefaultMethod.approvals = new ApproveAction[](0);
        askDefaultMethod.isWriteMethod = true;

        VaultMethodSchema memory decisionMethod = schema.methods[2];
        decisionMethod.name = "decisionOf";
        decisionMethod.description = "The answer recorded for a request.";
        decisionMethod.inputs = new FieldDescriptor[](1);
        decisionMethod.inputs[0] = FieldDescriptor("requestId", "uint256", "Oracle request id", 0);
        decisionMethod.outputs = new FieldDescriptor[](3);
        decisionMethod.outputs[0] = FieldDescriptor("action", "string", "Chosen action", 0);
        decisionMethod.outputs[1] = FieldDescriptor("cid", "string", "IPFS CID of the reasoning trace", 0);
        decisionMethod.outputs[2] = FieldDescriptor("received", "bool", "Whether an answer arrived", 0);
        decisionMethod.approvals = new ApproveAction[](0);
    }

    /// @dev Records the first answer and counts every delivery. Stays far below the 1,000,000
    ///      callback gas cap: two short strings and two counters.
    function _onReasoning(uint256 requestId, string calldata action, string calldata cid)
        internal
        override
    {
        uint256 deliveries = ++_deliveries[requestId];
        if (deliveries == 1) {
            _decisions[requestId] = Decision({action: action, cid: cid, received: true});
            _answeredIds.push(requestId);
        }
        emit DecisionReceived(requestId, action, cid);
    }
}
