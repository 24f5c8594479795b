"""Every off-chain money signature (EIP-3009), recorded before it leaves the process.

- :mod:`.ledger`: the ``authorizations`` table, budgets, signing (payments and cancels) in
  the transaction that records them; the ``core.authorization`` state machine.
- :mod:`.domains`: the allowlist of (token, chain) pairs, with each token's EIP-712 domain
  read from the contract.
- :mod:`.reconcile`: moves SIGNED rows to USED / EXPIRED / CANCELLED from the chain.
- :mod:`.typed`: signing a message a client built (x402's ClientEvmSigner seam), checked
  against the token's domain and EIP-3009's types.
- :mod:`.eip3009`: the kinds, typed data, selectors and topics.

:meth:`shared.keys.vault.Vault.sign_typed_data` refuses the EIP-3009 kinds; this package is
the only way they are signed.
"""

from shared.tx.authorizations.domains import DOMAIN_CACHE_TTL_S, DomainAllowlist, TokenDomain
from shared.tx.authorizations.eip3009 import Kind
from shared.tx.authorizations.ledger import (
    AUTHORIZATION_MACHINE,
    Authorization,
    AuthorizationError,
    AuthorizationStatus,
    BudgetExceededError,
    DomainMismatchError,
    DomainNotAllowedError,
    OpenAuthorizationError,
    PaymentOrder,
    budget_of,
    for_unit,
    get,
    set_budget,
    sign_authorization,
    sign_cancel,
    signed,
    spent,
)
from shared.tx.authorizations.reconcile import ReconcileReport, reconcile
from shared.tx.authorizations.typed import sign_typed_payment

__all__ = [
    "AUTHORIZATION_MACHINE",
    "DOMAIN_CACHE_TTL_S",
    "Authorization",
    "AuthorizationError",
    "AuthorizationStatus",
    "BudgetExceededError",
    "DomainAllowlist",
    "DomainMismatchError",
    "DomainNotAllowedError",
    "Kind",
    "OpenAuthorizationError",
    "PaymentOrder",
    "ReconcileReport",
    "TokenDomain",
    "budget_of",
    "for_unit",
    "get",
    "reconcile",
    "set_budget",
    "sign_authorization",
    "sign_cancel",
    "sign_typed_payment",
    "signed",
    "spent",
]
