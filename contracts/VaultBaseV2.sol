// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {VaultBase} from "./VaultBase.sol";
import {VaultUISchema} from "./IVaultSchemasV1.sol";

/// @title VaultBaseV2
/// @notice Flap Vault specification V2: a vault also describes its methods for the Flap UI.
abstract contract VaultBaseV2 is VaultBase {
    /// @notice The UI schema of the vault's user-facing methods.
    function vaultUISchema() public pure virtual returns (VaultUISchema memory schema);
}
