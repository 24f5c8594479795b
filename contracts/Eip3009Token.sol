// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Eip3009Token
/// @notice A USDC-like ERC-20 (6 decimals) with EIP-3009 transfers by signed authorization,
///         as Circle's FiatTokenV2 offers them: transferWithAuthorization,
///         receiveWithAuthorization, cancelAuthorization and authorizationState, with the
///         events AuthorizationUsed and AuthorizationCanceled. For the devnet and tests: the
///         node signs and reconciles against it exactly as against USDC on Base.
/// @dev Guarantees:
///  - An authorization is valid only while validAfter < block.timestamp < validBefore.
///  - Each (authorizer, nonce) is used at most once: a transfer, a receive or a cancel marks
///    it, and nothing ever unmarks it.
///  - A signature is accepted only from the authorizer itself (ecrecover, s in the lower half
///    of the curve order, v 27 or 28), over the EIP-712 digest of this contract's domain:
///    name and version as constructed, the current chain id, this address.
///  - receiveWithAuthorization is accepted only from the payee (msg.sender == to), so a
///    front-runner cannot submit it.
///  - Only minters mint; only the owner appoints minters or hands over ownership.
contract Eip3009Token {
    // --- ERC-20 ---------------------------------------------------------------------------

    string private _name;
    string private _version;
    string public symbol;
    uint8 public constant decimals = 6;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error InsufficientBalance(address account, uint256 balance, uint256 needed);
    error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);
    error ZeroAddress();

    // --- roles ----------------------------------------------------------------------------

    address public owner;
    mapping(address => bool) public isMinter;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event MinterConfigured(address indexed minter, bool allowed);

    error NotOwner(address caller);
    error NotMinter(address caller);

    // --- EIP-712 and EIP-3009 -------------------------------------------------------------

    bytes32 public constant EIP712_DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    // secp256k1's order / 2: a larger s is the malleable twin of a valid signature.
    uint256 private constant _HALF_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    mapping(address => mapping(bytes32 => bool)) private _authorizationStates;

    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    error AuthorizationNotYetValid(uint256 validAfter, uint256 timestamp);
    error AuthorizationExpired(uint256 validBefore, uint256 timestamp);
    error AuthorizationUsedOrCanceled(address authorizer, bytes32 nonce);
    error InvalidSignature();
    error CallerMustBePayee(address caller, address payee);

    constructor(string memory name_, string memory version_, string memory symbol_) {
        _name = name_;
        _version = version_;
        symbol = symbol_;
        owner = msg.sender;
        isMinter[msg.sender] = true;
        emit OwnershipTransferred(address(0), msg.sender);
        emit MinterConfigured(msg.sender, true);
    }

    // --- views ----------------------------------------------------------------------------

    function name() external view returns (string memory) {
        return _name;
    }

    function version() external view returns (string memory) {
        return _version;
    }

    /// @notice The EIP-712 domain separator for the current chain (computed on each call, so
    ///         it stays right on a fork with another chain id).
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(
            abi.encode(
                EIP712_DOMAIN_TYPEHASH,
                keccak256(bytes(_name)),
                keccak256(bytes(_version)),
                block.chainid,
                address(this)
            )
        );
    }

    /// @notice True once (authorizer, nonce) was used or canceled.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    // --- ERC-20 transfers -----------------------------------------------------------------

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        if (spender == address(0)) revert ZeroAddress();
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(from, msg.sender, allowed, value);
            unchecked {
                allowance[from][msg.sender] = allowed - value;
            }
        }
        _transfer(from, to, value);
        return true;
    }

    // --- EIP-3009 -------------------------------------------------------------------------

    /// @notice Move `value` from `from` to `to` with `from`'s signature; anyone may submit it.
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _useAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore,
            nonce, v, r, s
        );
        _transfer(from, to, value);
    }

    /// @notice transferWithAuthorization with the 65-byte signature r || s || v.
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        (uint8 v, bytes32 r, bytes32 s) = _split(signature);
        _useAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore,
            nonce, v, r, s
        );
        _transfer(from, to, value);
    }

    /// @notice Like transferWithAuthorization, but only the payee `to` may submit it.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (msg.sender != to) revert CallerMustBePayee(msg.sender, to);
        _useAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore,
            nonce, v, r, s
        );
        _transfer(from, to, value);
    }

    /// @notice Make an unused (authorizer, nonce) unusable, with the authorizer's signature.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s)
        external
    {
        if (_authorizationStates[authorizer][nonce]) {
            revert AuthorizationUsedOrCanceled(authorizer, nonce);
        }
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        _requireSigner(authorizer, structHash, v, r, s);
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    // --- minting and roles ----------------------------------------------------------------

    function mint(address to, uint256 value) external {
        if (!isMinter[msg.sender]) revert NotMinter(msg.sender);
        if (to == address(0)) revert ZeroAddress();
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function configureMinter(address minter, bool allowed) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (minter == address(0)) revert ZeroAddress();
        isMinter[minter] = allowed;
        emit MinterConfigured(minter, allowed);
    }

    function transferOwnership(address newOwner) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    // --- internals ------------------------------------------------------------------------

    function _useAuthorization(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) private {
        if (block.timestamp <= validAfter) {
            revert AuthorizationNotYetValid(validAfter, block.timestamp);
        }
        if (block.timestamp >= validBefore) {
            revert AuthorizationExpired(validBefore, block.timestamp);
        }
        if (_authorizationStates[from][nonce]) revert AuthorizationUsedOrCanceled(from, nonce);
        bytes32 structHash =
            keccak256(abi.encode(typehash, from, to, value, validAfter, validBefore, nonce));
        _requireSigner(from, structHash, v, r, s);
        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
    }

    function _requireSigner(address expected, bytes32 structHash, uint8 v, bytes32 r, bytes32 s)
        private
        view
    {
        if (uint256(s) > _HALF_ORDER || (v != 27 && v != 28)) revert InvalidSignature();
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
        address recovered = ecrecover(digest, v, r, s);
        if (recovered == address(0) || recovered != expected) revert InvalidSignature();
    }

    function _split(bytes calldata signature) private pure returns (uint8 v, bytes32 r, bytes32 s) {
        if (signature.length != 65) revert InvalidSignature();
        r = bytes32(signature[0:32]);
        s = bytes32(signature[32:64]);
        v = uint8(signature[64]);
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) revert ZeroAddress();
        uint256 balance = balanceOf[from];
        if (balance < value) revert InsufficientBalance(from, balance, value);
        unchecked {
            balanceOf[from] = balance - value;
        }
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
