"""The storage hooks on S3: atomic puts (multipart when large), ranged gets, paged lists, batched deletes.

Every function takes the bucket, so the job bucket's hooks and the data hooks (objects at ``s3://`` URLs
in any bucket) share them; ``missing`` says which AWS error codes mean not found (see
``errors.DATA_NOT_FOUND``).
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError
from pywren_core.data import SDKStream

from pywren_aws.errors import NOT_FOUND, from_code, mapped

#: Objects from this size on go up as a multipart upload, their parts in parallel. Below it one PUT
#: is as fast (and against moto faster: it reassembles parts in Python); AWS suggests parts from ~100 MB.
MULTIPART_THRESHOLD = 64 * 2**20
PART_SIZE = 8 * 2**20  # as boto3's own transfers; grows when 10,000 parts would not hold the object
MAX_PARTS = 10_000
PART_THREADS = 8
#: S3's DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000


def put(s3: Any, bucket: str, key: str, data: bytes, missing: Collection[str] = NOT_FOUND) -> None:
    """One PUT, or a multipart upload whose completion makes all of the object visible at once."""
    if len(data) < MULTIPART_THRESHOLD:
        with mapped(f"S3 put s3://{bucket}/{key}", missing=missing):
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        return
    with mapped(f"S3 multipart put s3://{bucket}/{key}", missing=missing):
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            part_size = max(PART_SIZE, -(-len(data) // MAX_PARTS))
            view = memoryview(data)

            def upload(number: int) -> dict[str, Any]:
                start = (number - 1) * part_size
                body = bytes(view[start : start + part_size])
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
                return {"PartNumber": number, "ETag": etag}

            count = -(-len(data) // part_size)
            with concurrent.futures.ThreadPoolExecutor(min(PART_THREADS, count)) as pool:
                parts = list(pool.map(upload, range(1, count + 1)))
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            # Parts of an unfinished upload are billed until aborted.
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # the original error is the one worth reporting
                pass
            raise


def get(s3: Any, bucket: str, key: str, byte_range: tuple[int, int] | None,
        missing: Collection[str] = NOT_FOUND) -> bytes:
    """The object, or bytes [start, end) of it; HTTP ranges are inclusive, hence ``end - 1``."""
    with mapped(f"S3 get s3://{bucket}/{key}", missing=missing):
        if byte_range is None:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        start, end = byte_range
        try:
            # An empty range still asks for one byte, so a missing key is reported as missing.
            response = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{max(start, end - 1)}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # starts at or past the end
                return b""
            raise
        return response["Body"].read()[: max(0, end - start)]


def open_range(s3: Any, bucket: str, key: str, byte_range: tuple[int, int],
               missing: Collection[str] = NOT_FOUND) -> Any:
    """Bytes [start, end) as a stream over one ranged GET (an empty one when the object ends before ``start``)."""
    start, end = byte_range
    what = f"S3 get s3://{bucket}/{key}"
    with mapped(what, missing=missing):
        try:
            response = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return io.BytesIO(b"")
            raise
    return SDKStream(response["Body"], lambda: mapped(what, missing=missing), int(response["ContentLength"]))


def keys_and_sizes(s3: Any, bucket: str, prefix: str,
                   missing: Collection[str] = NOT_FOUND) -> Iterator[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix``, page after page (1,000 keys each) as they come."""
    with mapped(f"S3 list s3://{bucket}/{prefix}", missing=missing):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"], obj["Size"]


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [key for key, _ in keys_and_sizes(s3, bucket, prefix)]


def delete(s3: Any, bucket: str, keys: Sequence[str], missing: Collection[str] = NOT_FOUND) -> None:
    """Quiet batch deletes; S3 reports no error for keys that do not exist, so this is idempotent."""
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start : start + DELETE_BATCH]
        more = f" and {len(batch) - 1} more keys" if len(batch) > 1 else ""
        with mapped(f"S3 delete s3://{bucket}/{batch[0]}{more}", missing=missing):
            response = s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        failed = [e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if failed:
            first = failed[0]
            message = (f"S3 delete s3://{bucket}/{first.get('Key')} (and {len(failed) - 1} more): "
                       f"{first.get('Code')} ({first.get('Message')})")
            raise from_code(first.get("Code", ""), 0, message, missing=missing)
