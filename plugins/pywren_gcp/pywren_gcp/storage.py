"""Job objects in Cloud Storage, through google-cloud-storage, with its errors mapped to pywren's.

One layer per kind of retry (the README's "Retries"): transport failures (a refused or reset
connection, a timeout before the answer) are retried by urllib3 under the SDK, a bounded number of
times per HTTP request; the SDK's own retry (``google.api_core`` Retry, bounded by time, not by
tries) is off. HTTP 408/429/5xx become :class:`~pywren_core.errors.ThrottledError`, which the core
retries with backoff, and a transport failure that outlasts urllib3's tries is a plain
:class:`~pywren_core.errors.StorageError`.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import google.auth.exceptions
import requests
import urllib3
from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from urllib3.util.retry import Retry

from pywren_core.data import SDKStream
from pywren_core.errors import AccessDeniedError, NotFoundError, StorageError, ThrottledError

T = TypeVar("T")

#: Sub-requests per batch request: the Cloud Storage JSON API accepts at most 100.
BATCH_SIZE = 100
#: Connections each client keeps to the storage endpoint; requests' default of 10 would make the
#: executor's 32 concurrent status reads, or a worker's concurrent calls, open and drop sockets.
POOL_SIZE = 64
TIMEOUT = (30.0, 120.0)  # (connect, read) seconds per request
#: HTTP tries per request on a transport failure: a connection that could not be made or broke, or
#: a timeout, before the response's head. Never on a status code (those are the core's to retry),
#: and on any method: every request here is idempotent (a put replaces the object whole).
TRIES = 3
TRANSPORT_RETRY = Retry(total=TRIES - 1, allowed_methods=None, status_forcelist=(),
                        respect_retry_after_header=False, backoff_factor=0.25)


#: What to do about Google credentials that are missing or unusable: every command says the same.
CREDENTIALS_HINT = ("set gcp.credentials_file (or GOOGLE_APPLICATION_CREDENTIALS) to a service-account key file, "
                    "or sign in with `gcloud auth application-default login`")


def credentials_error(what: str, exc: BaseException, hint: str = CREDENTIALS_HINT) -> AccessDeniedError:
    """The one error for credentials google-auth cannot find, load or refresh. It names the SDK's
    error type, not its message, which may quote a key file's path or contents."""
    return AccessDeniedError(f"{what}: no usable Google credentials ({type(exc).__name__}); {hint}")


def make_client(project: str, endpoint: str, credentials: Credentials | None) -> storage.Client:
    """A storage client for ``endpoint`` (an emulator, or Google's when empty).

    An explicit endpoint or ``STORAGE_EMULATOR_HOST`` means an emulator: anonymous credentials, and
    the project is only a label. Otherwise ``credentials`` (None: Application Default Credentials).
    """
    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST", "")
    if endpoint:
        client = storage.Client(project=project or "pywren-local", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
    else:
        try:  # without credentials given, the SDK looks for Application Default Credentials now
            client = storage.Client(project=project or None, credentials=credentials)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise credentials_error("opening Cloud Storage", exc) from None
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=TRANSPORT_RETRY)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    # google-cloud-storage >= 3.x fetches each bucket's metadata in a background thread, for tracing
    # attributes only, with retries of its own: a request and a thread per client outside the policy.
    client._bucket_metadata_cache = None
    return client


def mapped_error(exc: google_exceptions.GoogleAPICallError, what: str) -> Exception:
    """The pywren error for an SDK error. The message names the operation and the status, not
    the request (whose headers carry the credentials)."""
    code = exc.code or 0
    message = f"{what}: HTTP {code} {getattr(exc, 'message', '') or type(exc).__name__}"
    if code == 404:
        return NotFoundError(message)
    if code in (401, 403):
        return AccessDeniedError(message)
    if code in (408, 429) or code >= 500:
        return ThrottledError(message)
    return StorageError(message)


@contextmanager
def credentials_mapped(what: str) -> Iterator[None]:
    """Raise credentials refused or unusable in the block (a token refresh) as :func:`credentials_error`;
    a network failure on the way is left to the caller."""
    try:
        yield
    except google.auth.exceptions.TransportError:
        raise
    except google.auth.exceptions.GoogleAuthError as exc:
        raise credentials_error(what, exc) from None


@contextmanager
def errors_mapped(what: str) -> Iterator[None]:
    try:
        yield
    except google_exceptions.GoogleAPICallError as exc:
        raise mapped_error(exc, what) from None
    except (requests.RequestException, ConnectionError, google.auth.exceptions.TransportError) as exc:
        raise StorageError(f"{what}: {type(exc).__name__} (the connection failed, {TRIES} tries)") from None
    except google.auth.exceptions.GoogleAuthError as exc:  # the credentials were refused or cannot refresh
        raise credentials_error(what, exc) from None


@contextmanager
def body_errors_mapped(what: str) -> Iterator[None]:
    """A response body that breaks off while it is read: the connection failed, past any retry."""
    try:
        yield
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise StorageError(f"{what}: {type(exc).__name__} while reading the response") from None


class GcsStore:
    """The storage operations on any bucket the client reaches: the job bucket (the ``pywren_storage_*``
    hooks) and data buckets (the ``pywren_data_*`` hooks) share one client, one connection pool and
    one error mapping. Every operation names its bucket; no request is made to look a bucket up."""

    def __init__(self, client: storage.Client):
        self.client = client
        self.batch_supported = True
        self._lock = threading.Lock()
        self._buckets: dict[str, storage.Bucket] = {}
        self._pool: ThreadPoolExecutor | None = None

    def bucket(self, name: str) -> storage.Bucket:
        """The SDK's handle on bucket ``name`` (made once, without a request)."""
        handle = self._buckets.get(name)
        if handle is None:
            with self._lock:
                handle = self._buckets.setdefault(name, self.client.bucket(name))
        return handle

    def put(self, bucket: str, key: str, data: bytes) -> None:
        # The SDK sends up to 8 MiB in one multipart request and larger objects as a resumable upload.
        # Either is atomic: the object appears when the upload completes.
        with errors_mapped(f"put gs://{bucket}/{key}"):
            self.bucket(bucket).blob(key).upload_from_string(
                data, content_type="application/octet-stream", timeout=TIMEOUT, retry=None
            )

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
        blob = self.bucket(bucket).blob(key)
        with errors_mapped(f"get gs://{bucket}/{key}"):
            if byte_range is None:
                return blob.download_as_bytes(timeout=TIMEOUT, retry=None)
            start, end = byte_range
            if end <= start:
                blob.reload(timeout=TIMEOUT, retry=None)  # still NotFoundError for a missing key
                return b""
            try:
                # The hook's range is half-open [start, end); the SDK's end is inclusive.
                return blob.download_as_bytes(start=start, end=end - 1, timeout=TIMEOUT, retry=None)
            except google_exceptions.RequestRangeNotSatisfiable:
                return b""  # the object exists but ends before ``start``: slicing semantics

    def open_range(self, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
        """Bytes [start, end) as a stream over one ranged GET of the object's media, the request the
        SDK's own downloads make (its download functions write a whole range into a file, so they
        cannot hand the body over as it comes)."""
        start, end = byte_range
        what = f"get gs://{bucket}/{key}"
        with errors_mapped(what):
            url = self.bucket(bucket).blob(key)._get_download_url(self.client)
            response = self.client._http.request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"},
                                                 stream=True, timeout=TIMEOUT)
            if response.status_code == 416:  # the object ends before ``start``: slicing semantics
                response.close()
                return io.BytesIO(b"")
            if response.status_code >= 300:
                error = google_exceptions.from_http_response(response)
                response.close()
                raise error
        return SDKStream(response.raw, lambda: body_errors_mapped(what), int(response.headers["Content-Length"]))

    def list(self, bucket: str, prefix: str) -> list[str]:
        """Every key under ``prefix``, following every page."""
        return self._listing(bucket, prefix, "items(name),nextPageToken", lambda blob: blob.name)

    def list_sizes(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        """Every ``(key, size)`` under ``prefix``, following every page. A missing bucket is a
        ``NotFoundError`` (Cloud Storage answers 404), an empty prefix an empty list."""
        return self._listing(bucket, prefix, "items(name,size),nextPageToken",
                             lambda blob: (blob.name, int(blob.size or 0)))

    def _listing(self, bucket: str, prefix: str, fields: str, item: Callable[[storage.Blob], T]) -> list[T]:
        """``item`` of each object under ``prefix``: one request per 1,000 keys, only ``fields`` asked
        for, each page's objects dropped once read (a job's listing may hold 100,000 keys)."""
        with errors_mapped(f"list gs://{bucket}/{prefix}"):
            blobs = self.client.list_blobs(self.bucket(bucket), prefix=prefix, page_size=1000, fields=fields,
                                           timeout=TIMEOUT, retry=None)
            return [item(blob) for blob in blobs]  # the iterator follows every page

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete ``keys``; missing keys (and a missing bucket) are not an error."""
        for start in range(0, len(keys), BATCH_SIZE):
            group = list(keys[start : start + BATCH_SIZE])
            if not (self.batch_supported and self._delete_batch(bucket, group)):
                self._each(functools.partial(self._delete_one, bucket), group)

    def _delete_batch(self, bucket: str, keys: list[str]) -> bool:
        """One batch request for ``keys``; False when the endpoint has no batch API (fake-gcs-server)."""
        handle = self.bucket(bucket)
        batch = self.client.batch(raise_exception=False)
        with errors_mapped(f"delete {len(keys)} objects from gs://{bucket}"):
            try:
                with batch:
                    for key in keys:
                        handle.delete_blob(key, timeout=TIMEOUT, retry=None)
            except (ValueError, google_exceptions.NotFound):  # "not multi-part", or no such endpoint
                self.batch_supported = False
                return False
        responses = zip(keys, batch._responses, strict=True)
        failed = [(key, r) for key, r in responses if r.status_code >= 300 and r.status_code != 404]
        if failed:
            key, response = failed[0]
            raise mapped_error(google_exceptions.from_http_response(response),
                               f"delete gs://{bucket}/{key} ({len(failed)} of {len(keys)} failed)")
        return True

    def _delete_one(self, bucket: str, key: str) -> None:
        with errors_mapped(f"delete gs://{bucket}/{key}"):
            try:
                self.bucket(bucket).delete_blob(key, timeout=TIMEOUT, retry=None)
            except google_exceptions.NotFound:
                pass  # deleting is idempotent

    def _each(self, operation: Callable[[str], Any], keys: list[str]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(16, thread_name_prefix="pywren-gcs-delete")
        for _ in self._pool.map(operation, keys):
            pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.client.close()
