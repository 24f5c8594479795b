"""The provider and vault contracts, and the node's decoding of their events and reverts.

Happy paths run in-process on eth-tester. Reverts run on a real anvil: eth-tester behind
web3 8 drops the revert data, and the node itself only ever sees reverts through JSON-RPC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi.abi import encode
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import RPCEndpoint

from shared.contracts import (
    ERROR_STRING_SELECTOR,
    PANIC_SELECTOR,
    artifact,
    decode_revert,
    error_selectors,
)
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import deploy_stack
from workers.oracle.contracts import (
    ORACLE_ROLE,
    REASONING_FULFILLED_TOPIC0,
    REASONING_REQUESTED_TOPIC0,
    MalformedEventError,
    decode_reasoning_fulfilled,
    decode_reasoning_requested,
    reasoning_fulfilled_abi,
    reasoning_requested_abi,
)

FEE = 10**15
MODEL = "hodlai-local"
ACTIONS = ["BUY", "SELL", "HOLD"]
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
ADMIN_ROLE_TEXT = "DEFAULT_ADMIN_ROLE"


def deploy(w3: Web3, name: str, *args: Any, sender: str) -> Contract:
    compiled = artifact(name)
    factory = w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor(*args).transact({"from": sender})
    )
    return w3.eth.contract(address=receipt["contractAddress"], abi=compiled.abi)


def mined(w3: Web3, tx_hash: bytes) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    return receipt


def revert_of(action: Callable[[], object]) -> str:
    """The decoded reason ``action`` reverts with (fails the test if it does not revert)."""
    with pytest.raises(ContractLogicError) as info:
        action()
    data = info.value.data
    assert isinstance(data, str), f"no revert data in {info.value!r}"
    return decode_revert(data)


def logs_with_topic(receipt: Any, topic0: str) -> list[Any]:
    return [entry for entry in receipt["logs"] if entry["topics"][0].to_0x_hex() == topic0]


# --- eth-tester: happy paths ----------------------------------------------------------------


@dataclass
class LocalChain:
    w3: Web3
    admin: str
    treasury: str
    oracle: str
    user: str
    provider: Contract
    vault: Contract


@pytest.fixture(scope="module")
def local_chain() -> LocalChain:
    w3 = Web3(EthereumTesterProvider())
    admin, treasury, oracle, user = w3.eth.accounts[:4]
    provider = deploy(w3, "HoldAIProvider", admin, treasury, sender=admin)
    vault = deploy(w3, "ExampleDecisionVault", provider.address, MODEL, "Decide.", sender=admin)
    provider.functions.setModelFee(MODEL, FEE).transact({"from": admin})
    provider.functions.grantRole(ORACLE_ROLE, oracle).transact({"from": admin})
    return LocalChain(w3, admin, treasury, oracle, user, provider, vault)


@pytest.fixture
def local(local_chain: LocalChain) -> Iterator[LocalChain]:
    snapshot = local_chain.w3.testing.snapshot()
    yield local_chain
    local_chain.w3.testing.revert(snapshot)


def test_reason_sends_whole_payment_including_overpayment_to_treasury_at_once(
    local: LocalChain,
) -> None:
    w3 = local.w3
    before = w3.eth.get_balance(local.treasury)
    paid = 3 * FEE + 7
    mined(
        w3,
        local.vault.functions.ask(MODEL, "p", "s", ACTIONS).transact(
            {"from": local.user, "value": paid}
        ),
    )
    assert w3.eth.get_balance(local.treasury) - before == paid
    assert w3.eth.get_balance(local.provider.address) == 0
    assert w3.eth.get_balance(local.vault.address) == 0


def test_request_ids_start_at_one_and_info_keeps_requester_model_and_status(
    local: LocalChain,
) -> None:
    provider = local.provider
    assert provider.functions.lastRequestId().call() == 0
    assert provider.functions.nextRequestId().call() == 1
    for _ in range(2):
        local.vault.functions.ask(MODEL, "p", "s", ACTIONS).transact(
            {"from": local.user, "value": FEE}
        )
    assert provider.functions.lastRequestId().call() == 2
    assert provider.functions.nextRequestId().call() == 3
    assert provider.functions.getRequestInfo(1).call() == [local.vault.address, MODEL, False]
    assert provider.functions.getRequestInfo(3).call() == [
        "0x0000000000000000000000000000000000000000",
        "",
        False,
    ]


def test_request_event_carries_the_whole_payload_and_decodes_with_node_decoder(
    local: LocalChain,
) -> None:
    prompt, state = "Be careful. 慎重に", "price=1.00; trend=up"
    receipt = mined(
        local.w3,
        local.vault.functions.ask(MODEL, prompt, state, ACTIONS).transact(
            {"from": local.user, "value": FEE}
        ),
    )
    (log,) = logs_with_topic(receipt, REASONING_REQUESTED_TOPIC0)
    event = decode_reasoning_requested(log["topics"], log["data"])
    assert event.request_id == 1
    assert event.requester == local.vault.address
    assert (event.model, event.system_prompt, event.state_string) == (MODEL, prompt, state)
    assert event.action_set == tuple(ACTIONS)


def test_model_priced_at_zero_is_offered_and_free_until_removed(local: LocalChain) -> None:
    provider = local.provider
    assert provider.functions.isModelOffered("free-model").call() is False
    provider.functions.setModelFee("free-model", 0).transact({"from": local.admin})
    assert provider.functions.isModelOffered("free-model").call() is True
    assert provider.functions.getModelFee("free-model").call() == 0
    mined(
        local.w3,
        local.vault.functions.ask("free-model", "p", "s", ACTIONS).transact(
            {"from": local.user, "value": 0}
        ),
    )
    provider.functions.removeModel("free-model").transact({"from": local.admin})
    assert provider.functions.isModelOffered("free-model").call() is False


def test_example_vault_records_each_answer_once_and_emits_fulfilled_event(
    local: LocalChain,
) -> None:
    provider, vault = local.provider, local.vault
    for _ in range(3):
        vault.functions.ask(MODEL, "p", "s", ACTIONS).transact({"from": local.user, "value": FEE})
    answers = {1: "SELL", 2: "BUY", 3: "HOLD"}
    for request_id in (2, 1, 3):
        receipt = mined(
            local.w3,
            provider.functions.fulfillNodeReasoning(
                request_id, answers[request_id], f"{CID}{request_id}"
            ).transact({"from": local.oracle}),
        )
        (log,) = logs_with_topic(receipt, REASONING_FULFILLED_TOPIC0)
        event = decode_reasoning_fulfilled(log["topics"], log["data"])
        assert (event.request_id, event.requester) == (request_id, vault.address)
        assert (event.result_action, event.reasoning_cid) == (
            answers[request_id],
            f"{CID}{request_id}",
        )
        decisions = vault.events.DecisionReceived().process_receipt(receipt, errors=DISCARD)
        assert [d["args"]["requestId"] for d in decisions] == [request_id]
    assert vault.functions.answerCount().call() == 3
    assert [vault.functions.answeredIdAt(i).call() for i in range(3)] == [2, 1, 3]
    for request_id, action in answers.items():
        assert vault.functions.deliveriesOf(request_id).call() == 1
        assert vault.functions.decisionOf(request_id).call() == [action, f"{CID}{request_id}", True]
        assert provider.functions.getRequestInfo(request_id).call()[2] is True
    assert vault.functions.description().call() == (
        "HodlAI example decision vault: 3 decisions received"
    )


def test_ask_default_asks_buy_sell_hold_with_the_constructor_model_and_prompt(
    local: LocalChain,
) -> None:
    receipt = mined(
        local.w3,
        local.vault.functions.askDefault("state").transact({"from": local.user, "value": FEE}),
    )
    (log,) = logs_with_topic(receipt, REASONING_REQUESTED_TOPIC0)
    event = decode_reasoning_requested(log["topics"], log["data"])
    assert (event.model, event.system_prompt, event.state_string) == (MODEL, "Decide.", "state")
    assert event.action_set == ("BUY", "SELL", "HOLD")


def test_fulfil_for_an_eoa_requester_emits_event_without_calling_back(local: LocalChain) -> None:
    local.provider.functions.reason(MODEL, "p", "s", ACTIONS).transact(
        {"from": local.user, "value": FEE}
    )
    receipt = mined(
        local.w3,
        local.provider.functions.fulfillNodeReasoning(1, "BUY", CID).transact(
            {"from": local.oracle}
        ),
    )
    (log,) = logs_with_topic(receipt, REASONING_FULFILLED_TOPIC0)
    assert decode_reasoning_fulfilled(log["topics"], log["data"]).requester == local.user


def test_string_limits_default_to_the_plan_and_admin_can_change_them(local: LocalChain) -> None:
    provider = local.provider
    assert provider.functions.getStringLimits().call() == [64, 1024, 2048, 10, 64]
    assert provider.functions.callbackGasLimit().call() == 1_000_000
    receipt = mined(
        local.w3,
        provider.functions.setStringLimits(32, 100, 200, 3, 8).transact({"from": local.admin}),
    )
    (event,) = provider.events.StringLimitsSet().process_receipt(receipt)
    assert event["args"]["maxActionItems"] == 3
    assert provider.functions.getStringLimits().call() == [32, 100, 200, 3, 8]


def test_vault_describes_its_methods_for_the_flap_ui(local: LocalChain) -> None:
    vault_type, _description, methods = local.vault.functions.vaultUISchema().call()
    assert vault_type == "HoldAIExampleDecisionVault"
    assert [m[0] for m in methods] == ["ask", "askDefault", "decisionOf"]
    ask = methods[0]
    assert [field[0] for field in ask[2]] == ["model", "systemPrompt", "stateString", "actionSet"]
    assert ask[7] is True  # isWriteMethod
    assert methods[2][7] is False


# --- anvil: every revert, decoded the way the node decodes it -------------------------------


@dataclass
class AnvilChain:
    w3: Web3
    anvil: Anvil
    admin: str
    treasury: str
    oracle: str
    user: str
    provider: Contract
    vault: Contract
    reverting: Contract
    custom: Contract
    burning: Contract
    metering: Contract


@pytest.fixture(scope="module")
def anvil_chain(anvil_session: Anvil) -> AnvilChain:
    admin, treasury, _, oracle, user = (a.address for a in anvil_session.accounts[:5])
    deployment = deploy_stack(
        anvil_session.rpc_url,
        anvil_session.accounts[0].private_key,
        oracle_address=oracle,
        treasury=treasury,
        models={MODEL: FEE},
    )
    w3 = Web3(Web3.HTTPProvider(anvil_session.rpc_url))
    provider = w3.eth.contract(
        address=deployment.provider_address, abi=artifact("HoldAIProvider").abi
    )
    vault = w3.eth.contract(
        address=deployment.vault_address, abi=artifact("ExampleDecisionVault").abi
    )
    test_vaults = [
        deploy(w3, name, provider.address, sender=admin)
        for name in ("RevertingVault", "CustomErrorVault", "GasBurningVault", "GasMeteringVault")
    ]
    return AnvilChain(
        w3, anvil_session, admin, treasury, oracle, user, provider, vault, *test_vaults
    )


@pytest.fixture
def chain(anvil_chain: AnvilChain) -> Iterator[AnvilChain]:
    # The session anvil is shared: every test leaves it as it found it.
    request = anvil_chain.w3.provider.make_request
    snapshot = request(RPCEndpoint("evm_snapshot"), [])["result"]
    yield anvil_chain
    assert request(RPCEndpoint("evm_revert"), [snapshot])["result"] is True


def ask(chain: AnvilChain, vault: Contract, actions: list[str] = ACTIONS) -> int:
    receipt = mined(
        chain.w3,
        vault.functions.ask(MODEL, "p", "s", actions).transact({"from": chain.user, "value": FEE}),
    )
    (log,) = logs_with_topic(receipt, REASONING_REQUESTED_TOPIC0)
    return decode_reasoning_requested(log["topics"], log["data"]).request_id


def fulfil(chain: AnvilChain, request_id: int, *, gas: int | None = None, sender: str = "") -> Any:
    call = chain.provider.functions.fulfillNodeReasoning(request_id, "BUY", CID)
    params: dict[str, Any] = {"from": sender or chain.oracle}
    if gas is not None:
        params["gas"] = gas
    return call.transact(params)


@pytest.mark.parametrize(
    ("model", "prompt", "state", "actions", "expected"),
    [
        ("nope", "p", "s", ACTIONS, 'ModelNotOffered(model="nope")'),
        ("m" * 65, "p", "s", ACTIONS, 'FieldTooLong(field="model", length=65, maxLength=64)'),
        (
            MODEL,
            "p" * 1025,
            "s",
            ACTIONS,
            'FieldTooLong(field="systemPrompt", length=1025, maxLength=1024)',
        ),
        (
            MODEL,
            "p",
            "s" * 2049,
            ACTIONS,
            'FieldTooLong(field="stateString", length=2049, maxLength=2048)',
        ),
        (MODEL, "p", "s", [f"A{i}" for i in range(11)], "TooManyActions(count=11, maxItems=10)"),
        (MODEL, "p", "s", ["BUY", "x" * 65], "ActionTooLong(index=1, length=65, maxLength=64)"),
        (MODEL, "p", "s", [], "EmptyActionSet()"),
        (MODEL, "p", "s", ["BUY", ""], "EmptyAction(index=1)"),
    ],
    ids=[
        "unoffered-model",
        "model-too-long",
        "prompt-too-long",
        "state-too-long",
        "eleven-actions",
        "action-too-long",
        "empty-action-set",
        "empty-action",
    ],
)
def test_reason_rejects_bad_input_with_a_decodable_custom_error(
    chain: AnvilChain, model: str, prompt: str, state: str, actions: list[str], expected: str
) -> None:
    reason = revert_of(
        lambda: chain.vault.functions.ask(model, prompt, state, actions).transact(
            {"from": chain.user, "value": FEE}
        )
    )
    assert reason == expected


def test_reason_accepts_every_field_exactly_at_its_limit(chain: AnvilChain) -> None:
    chain.provider.functions.setModelFee("m" * 64, FEE).transact({"from": chain.admin})
    actions = [f"{i}".rjust(64, "a") for i in range(10)]
    receipt = mined(
        chain.w3,
        chain.vault.functions.ask("m" * 64, "p" * 1024, "s" * 2048, actions).transact(
            {"from": chain.user, "value": FEE}
        ),
    )
    assert len(logs_with_topic(receipt, REASONING_REQUESTED_TOPIC0)) == 1


def test_reason_rejects_payment_below_the_model_fee(chain: AnvilChain) -> None:
    reason = revert_of(
        lambda: chain.vault.functions.ask(MODEL, "p", "s", ACTIONS).transact(
            {"from": chain.user, "value": FEE - 1}
        )
    )
    assert reason == f'InsufficientFee(model="{MODEL}", required={FEE}, provided={FEE - 1})'


def test_lowered_string_limits_are_enforced_at_once(chain: AnvilChain) -> None:
    chain.provider.functions.setStringLimits(64, 1024, 2048, 2, 64).transact({"from": chain.admin})
    assert revert_of(lambda: ask(chain, chain.vault)) == "TooManyActions(count=3, maxItems=2)"


def test_reason_reverts_when_treasury_refuses_the_fee(chain: AnvilChain) -> None:
    # A contract without receive() cannot take the fee.
    refusing = chain.reverting.address
    chain.provider.functions.setTreasury(refusing).transact({"from": chain.admin})
    assert revert_of(lambda: ask(chain, chain.vault)) == (
        f"TreasuryTransferFailed(treasury={refusing}, amount={FEE})"
    )


def test_get_model_fee_of_an_unoffered_model_reverts(chain: AnvilChain) -> None:
    reason = revert_of(lambda: chain.provider.functions.getModelFee("nope").call())
    assert reason == 'ModelNotOffered(model="nope")'


def test_fulfil_by_an_account_without_oracle_role_is_refused(chain: AnvilChain) -> None:
    request_id = ask(chain, chain.vault)
    assert revert_of(lambda: fulfil(chain, request_id, sender=chain.user)) == (
        f"AccessControlUnauthorizedAccount(account={chain.user}, neededRole=ORACLE_ROLE)"
    )


def test_fulfil_of_an_unknown_request_is_refused(chain: AnvilChain) -> None:
    assert revert_of(lambda: fulfil(chain, 999)) == "UnknownRequest(requestId=999)"


def test_second_fulfilment_of_a_request_is_refused_and_vault_saw_one(chain: AnvilChain) -> None:
    request_id = ask(chain, chain.vault)
    mined(chain.w3, fulfil(chain, request_id))
    assert (
        revert_of(lambda: fulfil(chain, request_id)) == f"AlreadyFulfilled(requestId={request_id})"
    )
    assert chain.vault.functions.deliveriesOf(request_id).call() == 1


def test_revoked_oracle_can_no_longer_fulfil_and_regranted_one_can(chain: AnvilChain) -> None:
    provider = chain.provider
    request_id = ask(chain, chain.vault)
    provider.functions.revokeRole(ORACLE_ROLE, chain.oracle).transact({"from": chain.admin})
    assert provider.functions.hasRole(ORACLE_ROLE, chain.oracle).call() is False
    assert "neededRole=ORACLE_ROLE" in revert_of(lambda: fulfil(chain, request_id))
    provider.functions.grantRole(ORACLE_ROLE, chain.oracle).transact({"from": chain.admin})
    mined(chain.w3, fulfil(chain, request_id))


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("setModelFee", ["x", 1]),
        ("removeModel", [MODEL]),
        ("setStringLimits", [1, 1, 1, 1, 1]),
        ("setTreasury", ["0x" + "11" * 20]),
        ("setCallbackGasLimit", [500_000]),
        ("grantRole", [ORACLE_ROLE, "0x" + "11" * 20]),
    ],
)
def test_admin_functions_refuse_non_admins(
    chain: AnvilChain, function: str, args: list[Any]
) -> None:
    call = chain.provider.get_function_by_name(function)(*args)
    assert revert_of(lambda: call.transact({"from": chain.oracle})) == (
        f"AccessControlUnauthorizedAccount(account={chain.oracle}, neededRole={ADMIN_ROLE_TEXT})"
    )


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        ("setCallbackGasLimit", [0], "InvalidCallbackGasLimit(gasLimit=0)"),
        ("setCallbackGasLimit", [15_000_001], "InvalidCallbackGasLimit(gasLimit=15000001)"),
        (
            "setTreasury",
            ["0x" + "00" * 20],
            "InvalidTreasury(treasury=0x0000000000000000000000000000000000000000)",
        ),
        ("setModelFee", ["", 1], 'InvalidModelName(model="")'),
        ("removeModel", ["nope"], 'ModelNotOffered(model="nope")'),
    ],
)
def test_admin_functions_reject_nonsense_values(
    chain: AnvilChain, function: str, args: list[Any], expected: str
) -> None:
    call = chain.provider.get_function_by_name(function)(*args)
    assert revert_of(lambda: call.transact({"from": chain.admin})) == expected


def test_callback_gas_limit_change_is_announced(chain: AnvilChain) -> None:
    receipt = mined(
        chain.w3,
        chain.provider.functions.setCallbackGasLimit(500_000).transact({"from": chain.admin}),
    )
    (event,) = chain.provider.events.CallbackGasLimitSet().process_receipt(receipt)
    assert (event["args"]["previousLimit"], event["args"]["newLimit"]) == (1_000_000, 500_000)
    assert chain.provider.functions.callbackGasLimit().call() == 500_000


def test_reverting_vault_message_reaches_the_node_and_request_stays_open(
    chain: AnvilChain,
) -> None:
    request_id = ask(chain, chain.reverting)
    assert revert_of(lambda: fulfil(chain, request_id)) == (
        f'CallbackReverted(requestId={request_id}, reason=Error("RevertingVault: answer refused"))'
    )
    assert chain.provider.functions.getRequestInfo(request_id).call()[2] is False
    chain.reverting.functions.setRefusing(False).transact({"from": chain.user})
    mined(chain.w3, fulfil(chain, request_id))
    assert chain.reverting.functions.accepted().call() == 1


def test_custom_error_of_a_vault_is_decoded_inside_callback_reverted(chain: AnvilChain) -> None:
    request_id = ask(chain, chain.custom)
    assert revert_of(lambda: fulfil(chain, request_id)) == (
        f"CallbackReverted(requestId={request_id}, "
        f'reason=DecisionRejected(requestId={request_id}, action="BUY"))'
    )


def test_vault_callback_refuses_callers_other_than_the_provider(chain: AnvilChain) -> None:
    call = chain.vault.functions.fulfillReason(1, "BUY", CID)
    assert revert_of(lambda: call.transact({"from": chain.oracle})) == (
        f"OnlyHoldAIProvider(caller={chain.oracle}, provider={chain.provider.address})"
    )


def test_ask_batch_emits_one_request_event_per_count_with_consecutive_ids(
    chain: AnvilChain,
) -> None:
    count = 200
    first = chain.provider.functions.nextRequestId().call()
    before = chain.w3.eth.get_balance(chain.treasury)
    receipt = mined(
        chain.w3,
        chain.vault.functions.askBatch(count, MODEL, "p", "s", ACTIONS).transact(
            {"from": chain.user, "value": count * FEE}
        ),
    )
    events = [
        decode_reasoning_requested(e["topics"], e["data"])
        for e in logs_with_topic(receipt, REASONING_REQUESTED_TOPIC0)
    ]
    assert [e.request_id for e in events] == list(range(first, first + count))
    assert {e.requester for e in events} == {chain.vault.address}
    assert chain.w3.eth.get_balance(chain.treasury) - before == count * FEE


def test_ask_batch_rejects_zero_count_and_uneven_payment(chain: AnvilChain) -> None:
    batch = chain.vault.functions.askBatch
    assert (
        revert_of(
            lambda: batch(0, MODEL, "p", "s", ACTIONS).transact({"from": chain.user, "value": 0})
        )
        == "EmptyBatch()"
    )
    assert revert_of(
        lambda: batch(3, MODEL, "p", "s", ACTIONS).transact(
            {"from": chain.user, "value": 3 * FEE + 1}
        )
    ) == (f"UnevenBatchPayment(value={3 * FEE + 1}, count=3)")


# --- anvil: the callback gas cap ------------------------------------------------------------


def test_vault_burning_more_than_the_cap_fails_with_callback_out_of_gas(
    chain: AnvilChain,
) -> None:
    request_id = ask(chain, chain.burning)
    # The node simulates before sending; that simulation must say why, not just "reverted".
    call = chain.provider.functions.fulfillNodeReasoning(request_id, "BUY", CID)
    reason = revert_of(lambda: call.call({"from": chain.oracle, "gas": 3_000_000}))
    assert reason == f"CallbackOutOfGas(requestId={request_id}, gasCap=1000000)"
    # Sent anyway, it fails on chain and the request stays open.
    receipt = chain.w3.eth.wait_for_transaction_receipt(fulfil(chain, request_id, gas=3_000_000))
    assert receipt["status"] == 0
    assert chain.provider.functions.getRequestInfo(request_id).call()[2] is False


def test_a_normal_vault_over_a_lowered_cap_fails_with_callback_out_of_gas(
    chain: AnvilChain,
) -> None:
    # Recording two strings costs the example vault ~100k gas: 30k is not enough.
    chain.provider.functions.setCallbackGasLimit(30_000).transact({"from": chain.admin})
    request_id = ask(chain, chain.vault)
    assert revert_of(lambda: fulfil(chain, request_id)) == (
        f"CallbackOutOfGas(requestId={request_id}, gasCap=30000)"
    )


def test_oracle_sending_too_little_gas_gets_insufficient_gas_instead_of_starving_callback(
    chain: AnvilChain,
) -> None:
    request_id = ask(chain, chain.metering)
    call = chain.provider.functions.fulfillNodeReasoning(request_id, "BUY", CID)
    # 600k would be plenty for this vault's callback, but less than its promised 1M cap.
    reason = revert_of(lambda: call.call({"from": chain.oracle, "gas": 600_000}))
    assert reason.startswith(f"InsufficientGasForCallback(requestId={request_id}, gasLeft=")
    assert reason.endswith("callbackGasLimit=1000000)")
    receipt = chain.w3.eth.wait_for_transaction_receipt(fulfil(chain, request_id, gas=600_000))
    assert receipt["status"] == 0
    assert chain.metering.functions.gasAtEntry(request_id).call() == 0


def test_gas_estimate_is_enough_and_the_callback_gets_its_full_cap(chain: AnvilChain) -> None:
    request_id = ask(chain, chain.metering)
    tx = {
        "from": chain.oracle,
        "to": chain.provider.address,
        "data": chain.provider.encode_abi("fulfillNodeReasoning", args=[request_id, "BUY", CID]),
    }
    estimate = chain.w3.eth.estimate_gas(tx)
    assert estimate > 1_000_000  # the cap is reserved even though the vault needs far less
    receipt = mined(chain.w3, chain.w3.eth.send_transaction({**tx, "gas": estimate}))
    gas_at_entry = chain.metering.functions.gasAtEntry(request_id).call()
    # Only the callback's own dispatch (selector match, calldata decoding) comes off the cap.
    assert 1_000_000 - 5_000 < gas_at_entry <= 1_000_000
    assert receipt["gasUsed"] < 200_000  # unused callback gas is not charged


# --- decoding without a chain ---------------------------------------------------------------


def selector_of(name: str) -> bytes:
    (selector,) = [s for s, spec in error_selectors().items() if spec.name == name]
    return selector


def test_topic0_constants_match_the_compiled_event_abis() -> None:
    w3 = Web3()
    provider = w3.eth.contract(abi=artifact("HoldAIProvider").abi)
    assert provider.events.HoldAI_ReasoningRequested().topic == REASONING_REQUESTED_TOPIC0
    assert provider.events.HoldAI_ReasoningFulfilled().topic == REASONING_FULFILLED_TOPIC0
    assert [i["name"] for i in reasoning_requested_abi()["inputs"]] == [
        "requestId",
        "requester",
        "model",
        "systemPrompt",
        "stateString",
        "actionSet",
    ]
    assert [i["indexed"] for i in reasoning_fulfilled_abi()["inputs"]] == [True, True, False, False]


def test_decode_revert_names_builtin_errors_and_never_raises() -> None:
    panic = PANIC_SELECTOR + encode(["uint256"], [0x11])
    assert decode_revert(panic) == "Panic(0x11: arithmetic overflow or underflow)"
    assert decode_revert(b"") == (
        "reverted without data (out of gas, invalid opcode or a bare revert)"
    )
    assert decode_revert("0x1234") == "malformed revert data 0x1234"
    assert decode_revert("0xdeadbeef" + "00" * 32) == (
        "unknown error 0xdeadbeef with 32 bytes of arguments"
    )
    assert decode_revert("not hex") == "malformed revert data 'not hex'"
    assert decode_revert(ERROR_STRING_SELECTOR + b"\x00") == "Error(<undecodable 1 bytes>)"


def test_decode_revert_unfolds_nested_vault_data_and_survives_truncation() -> None:
    inner = ERROR_STRING_SELECTOR + encode(["string"], ["x" * 2000])
    outer = selector_of("CallbackReverted") + encode(["uint256", "bytes"], [7, inner[:1024]])
    assert (
        decode_revert(outer)
        == "CallbackReverted(requestId=7, reason=Error(<undecodable 1020 bytes>))"
    )
    empty = selector_of("CallbackReverted") + encode(["uint256", "bytes"], [7, b""])
    assert decode_revert(empty) == (
        "CallbackReverted(requestId=7, "
        "reason=reverted without data (out of gas, invalid opcode or a bare revert))"
    )
    opaque = selector_of("CallbackReverted") + encode(["uint256", "bytes"], [7, b"\x01\x02"])
    assert decode_revert(opaque) == "CallbackReverted(requestId=7, reason=0x0102)"


def test_request_log_with_invalid_utf8_is_reported_with_its_request_id() -> None:
    topics = [REASONING_REQUESTED_TOPIC0, "0x" + "00" * 31 + "05", "0x" + "00" * 12 + "ab" * 20]
    data = encode(["bytes", "bytes", "bytes", "bytes[]"], [b"m", b"\xff", b"s", [b"BUY"]])
    with pytest.raises(MalformedEventError, match="systemPrompt is not valid UTF-8") as info:
        decode_reasoning_requested(topics, data)
    assert info.value.request_id == 5
    with pytest.raises(MalformedEventError, match="topic0"):
        decode_reasoning_requested([REASONING_FULFILLED_TOPIC0, *topics[1:]], data)
