// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Multisend
/// @notice Pays many recipients of one ERC-20 in one transaction, pulled from the caller with
///         transferFrom after one approval (Disperse's `disperseTokenSimple` shape): the node's
///         distributor calls `disperseToken(token, recipients, values)` from its source key.
/// @dev Guarantees:
///  - All or nothing: every recipient i receives exactly values[i] from msg.sender, or the
///    whole call reverts. Nothing is ever held by this contract (it has no balance to lose).
///  - A token that reverts for one recipient (a blacklist, a paused account, a contract that
///    rejects) reverts the call with the token's own revert data, unchanged, so the caller's
///    simulation decodes the token's reason.
///  - A token that returns false reverts with TransferFailed(token, recipient, value); one
///    that returns nothing (USDT-style) is accepted when it does not revert.
///  - A token that delivers less than asked (a fee on transfer) reverts with
///    TransferShort(recipient, value, received): a recipient is paid its manifest amount
///    exactly, or not at all.
///  - Events: none of its own. Each payment is the token's Transfer(msg.sender, recipient,
///    value) log in the receipt; the node reads those to mark recipients paid.
contract Multisend {
    error LengthMismatch(uint256 recipients, uint256 values);
    error TransferFailed(address token, address recipient, uint256 value);
    error TransferShort(address recipient, uint256 value, uint256 received);

    function disperseToken(IERC20 token, address[] calldata recipients, uint256[] calldata values)
        external
    {
        uint256 n = recipients.length;
        if (n != values.length) revert LengthMismatch(n, values.length);
        for (uint256 i = 0; i < n; ++i) {
            address to = recipients[i];
            uint256 value = values[i];
            uint256 before = token.balanceOf(to);
            _pull(token, to, value);
            uint256 received = token.balanceOf(to) - before;
            if (received != value) revert TransferShort(to, value, received);
        }
    }

    function _pull(IERC20 token, address to, uint256 value) private {
        (bool ok, bytes memory ret) = address(token).call(
            abi.encodeCall(IERC20.transferFrom, (msg.sender, to, value))
        );
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
        if (ret.length != 0 && (ret.length < 32 || !abi.decode(ret, (bool)))) {
            revert TransferFailed(address(token), to, value);
        }
    }
}
