// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title VaultBase
/// @notice Flap Vault specification V1: the abstract base of every Flap vault.
/// @dev The Portal and Guardian are Flap's own contracts, known per chain. A vault deployed on
///      a chain Flap does not run on (a local devnet, for example) still works; only code that
///      asks for the Portal or Guardian reverts, with `UnsupportedChain`, instead of silently
///      talking to address zero.
abstract contract VaultBase {
    /// @notice The current chain has no Flap Portal / Guardian.
    error UnsupportedChain(uint256 chainId);

    /// @notice The Flap Portal on the current chain.
    function _getPortal() internal view returns (address portal) {
        uint256 chainId = block.chainid;
        if (chainId == 56) return 0xe2cE6ab80874Fa9Fa2aAE65D277Dd6B8e65C9De0; // BNB Chain
        if (chainId == 97) return 0x5bEacaF7ABCbB3aB280e80D007FD31fcE26510e9; // BNB testnet
        revert UnsupportedChain(chainId);
    }

    /// @notice The Flap Guardian on the current chain: the account privileged vault functions
    ///         must also accept.
    function _getGuardian() internal view returns (address guardian) {
        uint256 chainId = block.chainid;
        if (chainId == 56) return 0x9e27098dcD8844bcc6287a557E0b4D09C86B8a4b; // BNB Chain
        if (chainId == 97) return 0x76Fa8C526f8Bc27ba6958B76DeEf92a0dbE46950; // BNB testnet
        revert UnsupportedChain(chainId);
    }

    /// @notice A human-readable, state-dependent description of the vault.
    function description() public view virtual returns (string memory);
}
