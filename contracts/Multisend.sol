// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Multisend
/// @notice Pays many recipients of one ERC-20 in one transaction: the distributor's source
///         key calls `disperseToken(token, recipients, values)` after one approval; the total
///         is pulled with one transferFrom, then paid out with one transfer per recipient
///         (Disperse's `disperseToken` shape: no allowance write per recipient).
/// @dev Guarantees:
///  - All or nothing: every recipient i receives values[i], or the whole call reverts. The
///    contract holds nothing after a call: it pulls exactly the sum and pays it all out.
///  - A token that reverts for one recipient (a blacklist, a paused account, a contract that
///    rejects) reverts the call with the token's own revert data, unchanged, so the caller's
///    simulation decodes the token's reason.
///  - A token that returns false reverts with TransferFailed(token, recipient, value); one
///    that returns nothing (USDT-style) is accepted when it does not revert.
///  - A token that delivers less than it was asked for (a fee on transfer) reverts with
///    PullShort(total, received) before anyone is paid: recipients are paid their manifest
///    amounts exactly, or not at all.
///  - Events: none of its own. Each payment is the token's Transfer(multisend, recipient,
///    value) log in the receipt (after one Transfer(caller, multisend, total)); the node
///    reads those to mark recipients paid.
contract Multisend {
    error LengthMismatch(uint256 recipients, uint256 values);
    error TransferFailed(address token, address recipient, uint256 value);
    error PullShort(uint256 total, uint256 received);

    function disperseToken(IERC20 token, address[] calldata recipients, uint256[] calldata values)
        external
    {
        uint256 n = recipients.length;
        if (n != values.length) revert LengthMismatch(n, values.length);
        uint256 total = 0;
        for (uint256 i = 0; i < n; ++i) {
            total += values[i];
        }
        uint256 before = token.balanceOf(address(this));
        _call(token, abi.encodeCall(IERC20.transferFrom, (msg.sender, address(this), total)), address(this), total);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != total) revert PullShort(total, received);
        for (uint256 i = 0; i < n; ++i) {
            _call(token, abi.encodeCall(IERC20.transfer, (recipients[i], values[i])), recipients[i], values[i]);
        }
    }

    function _call(IERC20 token, bytes memory data, address to, uint256 value) private {
        (bool ok, bytes memory ret) = address(token).call(data);
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
