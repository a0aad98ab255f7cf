"""AWS SDK errors mapped onto pywren's, so nothing from botocore crosses the hook boundary.

The messages name the operation and the AWS error code, never a request's headers or signature,
so no credential can reach a log or an exception through them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pywren_core.errors import AccessDeniedError, NotFoundError, PywrenError, StorageError, ThrottledError

NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
DENIED = {"AccessDenied", "AccessDeniedException", "403", "AllAccessDisabled", "InvalidAccessKeyId",
          "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "UnrecognizedClientException"}
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
             "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "ServiceUnavailable",
             "InternalError", "RequestTimeout", "503"}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def from_code(code: str, status: int, message: str, default: type[PywrenError] = StorageError) -> PywrenError:
    """The pywren error for an AWS error code (or, failing a known code, its HTTP status)."""
    if code in NOT_FOUND:
        return NotFoundError(message)
    if code in DENIED or status == 403:
        return AccessDeniedError(message)
    if code in THROTTLED or status == 429 or status >= 500:
        return ThrottledError(message)
    return default(message)


@contextlib.contextmanager
def mapped(what: str, default: type[PywrenError] = StorageError) -> Iterator[None]:
    """Re-raise botocore errors from the block as pywren errors; ``what`` names the operation."""
    try:
        yield
    except ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        detail = exc.response.get("Error", {}).get("Message") or "no message"
        raise from_code(code, status, f"{what}: {code or status} ({detail})", default) from None
    except NoCredentialsError:
        raise AccessDeniedError(
            f"{what}: no AWS credentials found; set them up the usual boto3 way (environment, "
            "~/.aws/credentials, an instance or task role)"
        ) from None
    except BotoCoreError as exc:
        raise default(f"{what}: {type(exc).__name__}: {exc}") from None
