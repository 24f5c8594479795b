"""The one exception hierarchy of the node.

Errors of the libraries below (sqlite3, httpx, web3, pydantic) are translated into these at
the boundary that meets them (``raise ChainError(...) from exc``), so that callers and
the worker loop (shared.runtime.run_loop) can decide by *type* whether something is worth
retrying::

    HodlaiError
    ├── RetryableError              the same call may succeed later: back off and retry
    │   ├── StoreBusyError          SQLite stayed locked past the busy timeout
    │   ├── RpcTransportError       connection refused / reset, timeout, malformed response
    │   │   ├── RpcRateLimitedError 429, with the server's Retry-After when it gave one
    │   │   ├── RpcServerError      5xx or a JSON-RPC internal error
    │   │   ├── RpcDeadlineError    no complete answer within the call's total deadline
    │   │   └── RpcNoUsableUrlError every URL is quarantined (another chain) or unreachable
    │   ├── RpcRangeTooLargeError   the node refused the getLogs range or result size
    │   │   └── RpcResponseTooLargeError  the answer outgrew the size cap; cut off unread
    │   ├── StaleNodeError          the node is behind what we already know
    │   ├── LogDataConflictError    other logs than stored under an unchanged block hash
    │   ├── LlmTransportError       LLM timeout, 429, 5xx, connection refused
    │   │   ├── LlmAccessError      the LLM endpoint refuses this node (401/403/404)
    │   │   └── LlmBusyError        429/503-like "come back later": about us, not the request
    │   ├── FeeCapExceededError     the market fee is above the configured cap: wait
    │   └── InsufficientFundsError  the sender cannot pay for gas: fund it, then it resumes
    └── PermanentError              retrying the same input gives the same failure
        ├── ConfigError             a bad or missing setting; names the setting
        │   └── RpcChainMismatchError  no RPC URL serves the expected chain (all answered)
        ├── DatabaseMismatchError   the database belongs to another chain or provider
        │   └── SchemaVersionError  the database's schema is newer (or older) than this code
        ├── NotDurableError         a money component was given a connection below synchronous=FULL
        ├── SpendPolicyError        a transaction its key's spend policy forbids; names the rule
        ├── SenderTakenOverError    another process took this process's sending key: fatal
        ├── SenderHaltedError       a sending key is halted for an operator; nothing is signed
        ├── LedgerTamperedError     a txs row differs from its own signed bytes: never re-signed
        ├── TransitionConflict      the row was not in the expected state (someone moved it)
        ├── LeaseLostError          a worker completed work it no longer holds (fenced off)
        ├── NotFoundError           no such entity (a request id, a task): asked for by name
        ├── InvalidRequestError     a request that can never be answered (empty actions, ...)
        ├── BadAnswerError          the model answered outside the permitted set
        │   └── LlmAnswerTooLargeError  the answer was larger than the node reads; cut there
        ├── RpcResponseError        a JSON-RPC error object that is not transient
        │   └── ExecutionRevertedError  eth_call / estimateGas reverted; carries the reason
        ├── KeyFileError            missing, unreadable or too-open key file
        ├── LlmRejectedError        the LLM endpoint refused this one request (400, 413, 422)
        └── AttemptsExhaustedError  (a BadAnswerError) the bad-answer budget is spent
"""

from __future__ import annotations


class HodlaiError(Exception):
    """Base of every error the node raises on purpose."""


class RetryableError(HodlaiError):
    """The operation may succeed if tried again later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds the other side asked us to wait (HTTP Retry-After), when it said so
        self.retry_after = retry_after


class PermanentError(HodlaiError):
    """Trying again with the same input fails the same way."""


# --- retryable -------------------------------------------------------------------------


class StoreBusyError(RetryableError):
    """SQLite reported 'database is locked' after the busy timeout ran out."""


class RpcTransportError(RetryableError):
    """The RPC endpoint could not be reached or answered with something unparseable."""


class RpcRateLimitedError(RpcTransportError):
    """HTTP 429 or a JSON-RPC rate-limit error."""


class RpcServerError(RpcTransportError):
    """HTTP 5xx or a JSON-RPC internal error (-32603 and friends)."""


class RpcDeadlineError(RpcTransportError):
    """The call had no complete answer within its total deadline (a stuck or trickling
    server: httpx's own timeout applies to each read, not to the whole answer)."""


class RpcNoUsableUrlError(RpcTransportError):
    """Every RPC URL is quarantined (it serves another chain) or failed just now; the message
    says which is which."""


class RpcRangeTooLargeError(RetryableError):
    """The node refused an eth_getLogs range: too many blocks, results or bytes."""


class RpcResponseTooLargeError(RpcRangeTooLargeError):
    """The answer grew past the client's size cap and was cut off without being read further.

    A range error on purpose: the indexer halves its getLogs range on it, which ends an honest
    answer's overshoot; a hostile server is failed over from before this is raised."""


class StaleNodeError(RetryableError):
    """The node answered from a view of the chain older than one we have already seen."""


class LogDataConflictError(RetryableError):
    """The node answered other log data for a block whose hash is unchanged: a block hash
    commits to its logs, so that answer is wrong. Retryable: ask elsewhere (fail over)."""


class LlmTransportError(RetryableError):
    """The LLM endpoint timed out, rate-limited us, failed with 5xx or refused the connection."""


# --- permanent -------------------------------------------------------------------------


class ConfigError(PermanentError):
    """A setting is missing or malformed. The message names the setting."""


class RpcChainMismatchError(ConfigError):
    """Every URL of HODLAI_RPC_URLS answered, and none serves the expected chain id."""


class UnregisteredPurposeError(ConfigError):
    """The ledger holds open transactions of purpose kinds no registered handler can judge
    (the executor that registers them is not part of this process). Fatal at start: the run
    loop does not retry it, the process exits naming the kinds."""


class DatabaseMismatchError(PermanentError):
    """The database was created for another chain id or provider address."""


class SchemaVersionError(DatabaseMismatchError):
    """The database was written by a newer hodlai (or needs migrating first); names the
    versions."""


class NotDurableError(PermanentError):
    """A component that records money (the transaction ledger, the vault, the authorizations
    ledger) was handed a connection whose ``synchronous`` is below FULL: a power cut could
    lose what it records after the money has left. Open it with ``connect(..., durable=True)``."""


class SpendPolicyError(PermanentError):
    """A submission its sending key's spend policy forbids (shared/tx/policy.py): an unlisted
    contract or selector, a value over a cap. Nothing was signed; ``rule`` names the rule."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class SenderTakenOverError(PermanentError):
    """Another process claimed this process's sending key (shared/tx/senders.py): nothing
    may be signed or recorded with it here any more. Fatal: the run loop does not retry it,
    the process exits."""


class SenderHaltedError(PermanentError):
    """A sending key is halted until an operator resumes it (e.g. a nonce of it was used by a
    transaction this node did not sign: someone else holds the key). Nothing new is signed."""


class LedgerTamperedError(PermanentError):
    """A ``txs`` row's call columns (to, calldata, value, gas) differ from the call its signed
    bytes hold, or the bytes were signed by another key or for another chain: someone wrote
    the database file. Nothing is signed from such a row."""


class TransitionConflict(PermanentError):
    """A state transition found the row in another state than expected."""


class NotFoundError(PermanentError):
    """The entity asked for by its key (a request id, a task id) does not exist."""


class LeaseLostError(TransitionConflict):
    """A worker tried to complete work whose lease it no longer holds."""


class InvalidRequestError(PermanentError):
    """The request can never be answered as it stands."""


class BadAnswerError(PermanentError):
    """The model's answer is not exactly one of the permitted actions."""


class RpcResponseError(PermanentError):
    """A JSON-RPC error object that is not transient."""

    def __init__(self, message: str, *, code: int | None = None, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class ExecutionRevertedError(RpcResponseError):
    """eth_call or eth_estimateGas reverted; ``reason`` is the decoded revert reason."""

    def __init__(
        self, message: str, *, code: int | None = None, data: object = None, reason: str = ""
    ) -> None:
        super().__init__(message, code=code, data=data)
        self.reason = reason


class KeyFileError(PermanentError):
    """The key file is missing, unreadable, malformed or readable by others."""


class LlmAccessError(LlmTransportError):
    """The LLM endpoint refuses this node (401/403/404: key, plan or model id).

    Retryable on purpose: it is the node's configuration, not the request, that is wrong, so
    workers pause instead of failing every request until an operator fixes it."""


class LlmBusyError(LlmTransportError):
    """The LLM endpoint asked us to come back later (429, 503, 408, 409, 425).

    Says nothing about the request that got it (a rate limit is per key, an overload per
    server), so it never counts against that request as a poison strike."""


class LlmAnswerTooLargeError(BadAnswerError):
    """The endpoint's answer was larger than the node reads; the rest was left unread.

    A bad answer like any other (it spends an attempt), but one whose text is not kept:
    neither fed back to the model nor stored in the trace."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        #: bytes the node reads of one answer
        self.limit = limit


class LlmRejectedError(PermanentError):
    """The LLM endpoint refused this one request (400, 413, 422, ...): sending it again as it
    stands fails the same way."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class AttemptsExhaustedError(BadAnswerError):
    """Every attempt of the budget ended in a bad answer; ``trace_json`` records them all."""

    def __init__(self, message: str, *, trace_json: str) -> None:
        super().__init__(message)
        self.trace_json = trace_json


class FeeCapExceededError(RetryableError):
    """The chain's current fee is above the operator's cap; sending waits for it to fall."""


class InsufficientFundsError(RetryableError):
    """The sending account cannot pay for gas; sending pauses until it is funded."""
