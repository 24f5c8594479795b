"""``hodlai mint-server``: the x402 token-mint server (issue 20 §2, the seed's "Server URL").

``POST /mint/{tokenAddress}?to=0x…`` sells one mint of a MintToken behind x402's FastAPI
payment middleware (exact scheme, EIP-3009 on the USDC-like token, the payment-identifier
extension required). A local facilitator (x402's own, with its exact EVM scheme) settles
through the core's sending service from the minter key; the mint is sent the same way. Each
payment is settled and minted at most once (workers/mint/server/app.py).
"""
