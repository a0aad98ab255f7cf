"""The errors that cross the hook boundary and reach users.

Every backend maps its SDK's errors onto these, so user code catches one type whatever the cloud.
Each also subclasses the matching built-in (``except FileNotFoundError`` just works).
"""

from __future__ import annotations


class PywrenError(Exception):
    """Base class of every error pywren raises."""


class ConfigError(PywrenError, ValueError):
    """The configuration is wrong: the message names the key and where it came from."""


class BackendNotFoundError(PywrenError, LookupError):
    """The configured backend is not installed: the message lists the installed ones."""


class PluginError(PywrenError):
    """A plugin failed to load or does not implement the contract."""


class StorageError(PywrenError, OSError):
    """A storage operation failed for a reason that retrying will not fix."""


class NotFoundError(StorageError, FileNotFoundError):
    """The key does not exist in the bucket."""


class AccessDeniedError(StorageError, PermissionError):
    """The credentials may not perform this operation."""


class ObjectChangedError(StorageError):
    """An object being read in pieces changed size after the map was planned."""


class URLError(PywrenError, ValueError):
    """A storage URL the backend does not serve, or that is malformed; names who serves it."""


class RuntimeBuildError(PywrenError):
    """A runtime could not be resolved, installed or fit into the platform's limits; the message
    names the package and what pip or uv said."""


class RuntimeMismatchError(ConfigError):
    """A function needs a distribution its runtime lacks, or has at another release; the message
    gives the requirement line to add."""


class ThrottledError(PywrenError):
    """The platform asked us to slow down (HTTP 429, SlowDown, 503); the operation may be retried.

    ``retry_after`` carries the platform's hint in seconds, when it gave one.
    """

    def __init__(self, message: str = "throttled", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SignatureError(PywrenError):
    """A pickle's HMAC does not match its job secret: it was not written by this job."""


class VersionMismatchError(PywrenError):
    """Client and worker run different Python or pywren-core versions."""


class CallFailedError(PywrenError):
    """A call ended without a result of its own: the worker died, timed out or refused it."""


class CallTimeoutError(CallFailedError, TimeoutError):
    """A call ran past its timeout, or no worker ever reported on it."""


class WorkerDiedError(CallFailedError):
    """The process running the call exited (crash, SIGKILL, out of memory)."""


class RemoteError(PywrenError):
    """Stands in for a remote exception that could not be pickled back; keeps its type name."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of a re-raised remote exception, so its traceback prints with it."""

    def __init__(self, tb: str):
        tb = _with_source_lines(tb)
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\nRemote traceback:\n{self.tb}"""'


def _with_source_lines(tb: str) -> str:
    """Add the source line under each frame of a remote traceback whose file exists here (the
    user's own code, which the worker ran without its source files)."""
    import linecache
    import re

    lines = tb.splitlines(keepends=True)
    out = []
    for index, line in enumerate(lines):
        out.append(line)
        frame = re.match(r'  File "(.+)", line (\d+), in ', line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if frame and not following.startswith("    "):
            source = linecache.getline(frame.group(1), int(frame.group(2))).strip()
            if source:
                out.append(f"    {source}\n")
    return "".join(out)


class SerializationError(PywrenError, TypeError):
    """A function, argument or result cannot be pickled to travel between client and worker."""


class InvokeError(PywrenError):
    """The platform refused to start a call (not throttling: a missing function, a bad request)."""


class AmbiguousInvokeError(PywrenError):
    """The invoke request was sent but its answer was lost (a dropped connection, a read timeout).

    The platform may or may not have accepted it. The core invokes again and counts the call's
    possible extra run in ``stats["ambiguous_invokes"]``: a call may then run twice.
    """
