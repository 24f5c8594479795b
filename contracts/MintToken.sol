// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title MintToken
/// @notice An ERC-20 sold per mint by `hodlai mint-server` (issue 20): each mint(to) creates
///         exactly tokensPerMint() tokens for `to`, one Transfer from the zero address, until
///         maxSupply() is reached. Only minters mint: the mint server's key holds the role.
/// @dev Guarantees:
///  - Every successful mint(to) emits exactly one Transfer(address(0), to, tokensPerMint) and
///    raises totalSupply by tokensPerMint; nothing else creates tokens.
///  - totalSupply never exceeds maxSupply: a mint that would is refused (MaxSupplyExceeded),
///    so at most maxSupply / tokensPerMint mints ever happen.
///  - tokensPerMint and maxSupply are fixed at construction (tokensPerMint > 0,
///    maxSupply >= tokensPerMint).
///  - Only the owner appoints or removes minters and hands over ownership; the deployer is
///    the first owner and is not a minter unless it appoints itself.
contract MintToken {
    // --- ERC-20 ---------------------------------------------------------------------------

    string public name;
    string public symbol;
    uint8 public constant decimals = 18;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error InsufficientBalance(address account, uint256 balance, uint256 needed);
    error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);
    error ZeroAddress();

    // --- the sale per mint ----------------------------------------------------------------

    uint256 public immutable tokensPerMint;
    uint256 public immutable maxSupply;
    /// @notice How many mint(to) calls succeeded.
    uint256 public mintCount;

    event Minted(address indexed minter, address indexed to, uint256 amount, uint256 mintIndex);

    error InvalidMintConfig(uint256 tokensPerMint, uint256 maxSupply);
    error MaxSupplyExceeded(uint256 totalSupply, uint256 tokensPerMint, uint256 maxSupply);

    // --- roles ----------------------------------------------------------------------------

    address public owner;
    mapping(address => bool) public isMinter;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event MinterConfigured(address indexed minter, bool allowed);

    error NotOwner(address caller);
    error NotMinter(address caller);

    constructor(
        string memory name_,
        string memory symbol_,
        uint256 tokensPerMint_,
        uint256 maxSupply_
    ) {
        if (tokensPerMint_ == 0 || maxSupply_ < tokensPerMint_) {
            revert InvalidMintConfig(tokensPerMint_, maxSupply_);
        }
        name = name_;
        symbol = symbol_;
        tokensPerMint = tokensPerMint_;
        maxSupply = maxSupply_;
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    // --- minting --------------------------------------------------------------------------

    /// @notice Mint tokensPerMint() tokens to `to`; only a minter, only below maxSupply().
    function mint(address to) external returns (uint256 amount) {
        if (!isMinter[msg.sender]) revert NotMinter(msg.sender);
        if (to == address(0)) revert ZeroAddress();
        amount = tokensPerMint;
        uint256 supply = totalSupply;
        if (supply + amount > maxSupply) revert MaxSupplyExceeded(supply, amount, maxSupply);
        totalSupply = supply + amount;
        balanceOf[to] += amount;
        uint256 index = mintCount;
        mintCount = index + 1;
        emit Transfer(address(0), to, amount);
        emit Minted(msg.sender, to, amount, index);
    }

    /// @notice How many more mint(to) calls can succeed.
    function mintsLeft() external view returns (uint256) {
        return (maxSupply - totalSupply) / tokensPerMint;
    }

    // --- roles ----------------------------------------------------------------------------

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
