"""AWS SDK errors mapped onto pywren's, so nothing from botocore crosses the hook boundary.

The messages name the operation and the AWS error code, never a request's headers or signature,
so no credential can reach a log or an exception through them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
)
from pywren_core.errors import AccessDeniedError, NotFoundError, PywrenError, StorageError, ThrottledError

NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
#: For data buckets (``s3://`` URLs) a missing bucket is missing too. Not for the job bucket: there the core
#: reads NotFoundError as "not written yet" or "job cleaned up", and a missing bucket must stop the map.
DATA_NOT_FOUND = NOT_FOUND | {"NoSuchBucket"}
DENIED = {"AccessDenied", "AccessDeniedException", "403", "AllAccessDisabled", "InvalidAccessKeyId",
          "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "UnrecognizedClientException"}
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
             "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "ServiceUnavailable",
             "InternalError", "RequestTimeout", "503"}


#: botocore's errors for credentials it cannot find, complete, load or refresh.
CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, ProfileNotFound, CredentialRetrievalError,
                     SSOError, TokenRetrievalError)
#: Those whose message names only what is missing (a variable, a profile), never a value: quoted.
_QUOTABLE = (NoCredentialsError, PartialCredentialsError, ProfileNotFound)
#: What to do about them: every command says the same.
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile of "
                    "~/.aws/credentials or ~/.aws/config, or run where a role applies (instance, task, function)")


def credentials_error(what: str, exc: BotoCoreError) -> AccessDeniedError:
    """The one error for credentials botocore cannot use. Only a message that cannot hold a secret is
    quoted (the others may quote a credential process's output); else the error's type."""
    detail = str(exc) if isinstance(exc, _QUOTABLE) else type(exc).__name__
    return AccessDeniedError(f"{what}: no usable AWS credentials ({detail}); {CREDENTIALS_HINT}")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def from_code(code: str, status: int, message: str, default: type[PywrenError] = StorageError,
              missing: Collection[str] = NOT_FOUND) -> PywrenError:
    """The pywren error for an AWS error code (or, failing a known code, its HTTP status); ``missing``:
    the codes that mean not found."""
    if code in missing:
        return NotFoundError(message)
    if code in DENIED or status == 403:
        return AccessDeniedError(message)
    if code in THROTTLED or status == 429 or status >= 500:
        return ThrottledError(message)
    return default(message)


@contextlib.contextmanager
def mapped(what: str, default: type[PywrenError] = StorageError,
           missing: Collection[str] = NOT_FOUND) -> Iterator[None]:
    """Re-raise botocore errors from the block as pywren errors; ``what`` names the operation."""
    try:
        yield
    except ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        detail = exc.response.get("Error", {}).get("Message") or "no message"
        raise from_code(code, status, f"{what}: {code or status} ({detail})", default, missing) from None
    except CREDENTIAL_ERRORS as exc:
        raise credentials_error(what, exc) from None
    except BotoCoreError as exc:
        raise default(f"{what}: {type(exc).__name__}: {exc}") from None
