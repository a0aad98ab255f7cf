"""Azure SDK and HTTP errors translated to pywren_core's, so no SDK type crosses the hook boundary.

Messages keep the service's status, error code and first line of explanation, and never a
credential: anything listed as a secret of the session is masked before it reaches a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from pywren_core.errors import AccessDeniedError, NotFoundError, PywrenError, StorageError, ThrottledError

#: Service error codes that mean "slow down" whatever the HTTP status says.
THROTTLE_CODES = {"ServerBusy", "OperationTimedOut", "TooManyRequests"}
#: Answers that say "try again later": throttling, and the service's own transient failures. The SDK
#: retries no answer (see ``session._sdk_options``); these reach the core as ThrottledError, which it
#: retries with backoff.
RETRY_LATER_STATUSES = {408, 429, 500, 502, 503, 504}


#: What to do about Azure credentials that are missing or unusable: every command says the same.
CREDENTIALS_HINT = ("set azure.connection_string (or AZURE_STORAGE_CONNECTION_STRING), or azure.storage_account "
                    "with azure.account_key, or sign in for DefaultAzureCredential (az login, a managed identity, "
                    "or AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET)")


def credentials_error(what: str, exc: BaseException) -> AccessDeniedError:
    """The one error for a credential that yields no token (DefaultAzureCredential finding no sign-in).
    It names the error's type, not its message, which lists every credential tried and why."""
    return AccessDeniedError(f"{what}: no usable Azure credentials ({type(exc).__name__}); {CREDENTIALS_HINT}")


def retry_after(headers: object) -> float | None:
    """The platform's Retry-After hint in seconds, when it sent one we can read."""
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def translate(exc: AzureError, what: str, secrets: Iterable[str] = ()) -> PywrenError:
    """The pywren_core error for an SDK error raised while doing ``what`` (e.g. "get 'a/b'")."""
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return credentials_error(what, exc)  # raised by the credential itself, before any request
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StorageError(scrub(f"{what}: could not reach Azure Storage: {exc.message}", secrets))
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))  # the SDK's enum, or the code as the service sent it
    lines = (exc.message or "").strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    text = scrub(f"{what}: {status or ''} {code} {reason}".replace("  ", " "), secrets)
    response = getattr(exc, "response", None)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFoundError(text)
    if status in RETRY_LATER_STATUSES or code in THROTTLE_CODES:
        return ThrottledError(text, retry_after(getattr(response, "headers", None)))
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AccessDeniedError(text)
    if isinstance(exc, HttpResponseError):
        return StorageError(text)
    return StorageError(scrub(f"{what}: {type(exc).__name__}: {exc.message}", secrets))


@contextlib.contextmanager
def mapped(what: str, secrets: Iterable[str] = ()) -> Iterator[None]:
    """Raise the SDK's errors inside the block as pywren_core errors (without the SDK's chain,
    whose request details are not ours to show)."""
    try:
        yield
    except AzureError as exc:
        raise translate(exc, what, secrets) from None
