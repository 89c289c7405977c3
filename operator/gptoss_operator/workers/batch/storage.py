"""Where a batch's files live: a folder on a mounted volume, or a bucket in an
S3-compatible service.

Blocking calls (the workers run them in threads). Every write is whole or absent: a
volume file is written beside its name and renamed into place, an S3 object appears when
its upload completes. That is what makes a worker's progress safe to kill at any moment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from gptoss_operator.api.batch import S3Location
from gptoss_operator.workers.batch.lines import MAX_LINE_BYTES, OversizedLine

READ_CHUNK = 1 << 20
UPLOAD_PART = 16 << 20  # S3 multipart: every part but the last is at least 5 MiB


class StorageError(Exception):
    """A file or bucket the batch cannot use. ``permanent`` when trying again cannot help
    (missing, forbidden, wrong credentials)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def split_lines(
    chunks: Iterator[bytes], limit: int = MAX_LINE_BYTES
) -> Iterator[bytes | OversizedLine]:
    """The lines of a byte stream, split on newlines only (a trailing CR is dropped); a
    last line without a newline counts. A line longer than ``limit`` comes as an
    OversizedLine, and no more than ``limit`` bytes of it are ever held."""
    pending = bytearray()
    dropped = 0  # bytes of the current line beyond the limit, when over it
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = memoryview(chunk)[start : len(chunk) if end < 0 else end]
            if dropped:
                dropped += len(piece)
            elif len(pending) + len(piece) > limit:
                dropped = len(pending) + len(piece)
                pending.clear()
            else:
                pending += piece
            if end < 0:
                break
            if dropped:
                yield OversizedLine(dropped)
            else:
                yield _without_cr(bytes(pending))
            pending.clear()
            dropped = 0
            start = end + 1
    if dropped:
        yield OversizedLine(dropped)
    elif pending:
        yield _without_cr(bytes(pending))


def _without_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class InputFile(Protocol):
    url: str

    def lines(self) -> Iterator[bytes | OversizedLine]: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class OutputFolder(Protocol):
    def url(self, name: str) -> str: ...

    def check_writable(self) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` only if it does not exist, atomically: was it written?"""
        ...

    def delete(self, name: str) -> None: ...

    def writer(self, name: str) -> contextlib.AbstractContextManager[Writer]: ...


# ---------------------------------------------------------------- volumes
class VolumeFile:
    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url

    def lines(self) -> Iterator[bytes | OversizedLine]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError as error:
            raise StorageError(f"input file {self.url} does not exist", permanent=True) from error
        except OSError as error:
            raise StorageError(
                f"input file {self.url} cannot be read: {error.strerror}", permanent=True
            ) from error
        with handle:
            yield from split_lines(iter(lambda: handle.read(READ_CHUNK), b""))


@contextlib.contextmanager
def _volume_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        permanent = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
        raise StorageError(f"{what}: {error.strerror}", permanent=permanent) from error


class VolumeFolder:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self._url = url.rstrip("/")

    def url(self, name: str) -> str:
        return f"{self._url}/{name}"

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StorageError(
                f"output folder {self._url} is not writable: {error.strerror}", permanent=True
            ) from error

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        with _volume_errors(f"listing {self.url(prefix)} failed"):
            if not base.is_dir():
                return []
            return sorted(
                str(path.relative_to(self.root))
                for path in base.rglob("*")
                if path.is_file() and not path.name.startswith(".")
            )

    def exists(self, name: str) -> bool:
        with _volume_errors(f"reading {self.url(name)} failed"):
            return (self.root / name).is_file()

    def read(self, name: str) -> bytes:
        with _volume_errors(f"reading {self.url(name)} failed"):
            return (self.root / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        with _volume_errors(f"writing {self.url(name)} failed"), self.writer(name) as out:
            out.write(data)

    def create(self, name: str, data: bytes) -> bool:
        target = self.root / name
        with _volume_errors(f"writing {self.url(name)} failed"):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        return True

    def delete(self, name: str) -> None:
        with (
            _volume_errors(f"deleting {self.url(name)} failed"),
            contextlib.suppress(FileNotFoundError),
        ):
            (self.root / name).unlink()

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Writer]:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}"
        try:
            with temporary.open("wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise


# ---------------------------------------------------------------- S3
_PERMANENT_CODES = {
    "NoSuchBucket",
    "NoSuchKey",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "AllAccessDisabled",
    "404",
    "403",
}


def s3_client(location: S3Location, credentials_env: str | None = None) -> Any:
    """A boto3 client for a location. With ``credentials_env``, the keys are in the env
    vars ``<prefix>AWS_ACCESS_KEY_ID`` ... (the pod maps the location's Secret there);
    without, boto3's default chain finds them (AWS_* env vars, a web identity)."""
    import boto3
    from botocore.config import Config

    keys: dict[str, Any] = {}
    if credentials_env is not None:
        keys = {
            "aws_access_key_id": os.environ.get(f"{credentials_env}AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": os.environ.get(f"{credentials_env}AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": os.environ.get(f"{credentials_env}AWS_SESSION_TOKEN") or None,
        }

    config = Config(
        region_name=location.region,
        s3={"addressing_style": "path" if location.pathStyle else "auto"},
        retries={"mode": "standard", "max_attempts": 8},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.client("s3", endpoint_url=location.endpoint, config=config, **keys)


def _s3_error(what: str, error: Exception) -> StorageError:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = error.response.get("Error", {}).get("Message") or code
        return StorageError(f"{what}: {code}: {message}", permanent=code in _PERMANENT_CODES)
    if isinstance(error, NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials", permanent=True)
    if isinstance(error, BotoCoreError):
        return StorageError(f"{what}: {error}", permanent=False)
    raise error


class S3File:
    def __init__(self, location: S3Location, client: Any) -> None:
        self.location = location
        self.url = f"s3://{location.bucket}/{location.key}"
        self._client = client

    def lines(self) -> Iterator[bytes | OversizedLine]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client.get_object(Bucket=self.location.bucket, Key=self.location.key)[
                "Body"
            ]
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"input file {self.url} cannot be read", error) from error
        try:
            yield from split_lines(body.iter_chunks(READ_CHUNK))
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"reading input file {self.url} failed", error) from error
        finally:
            body.close()


class _Upload:
    """A multipart upload, completed on a clean exit and aborted otherwise."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.part_size = part_size
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_size:
            self._send_part()

    def _send_part(self) -> None:
        if self.upload_id is None:
            started = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            self.upload_id = started["UploadId"]
        number = len(self.parts) + 1
        sent = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self.buffer.clear()

    def complete(self) -> None:
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send_part()
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )


class S3Folder:
    def __init__(self, location: S3Location, client: Any, part_size: int = UPLOAD_PART) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.key.strip("/")
        self.part_size = part_size
        self._client = client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def check_writable(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        probe = self._key(f".probe-{uuid.uuid4().hex}")
        try:
            self._client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(
                f"output s3://{self.bucket}/{self.prefix} is not writable", error
            ) from error

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        names = []
        start = len(self._key(""))
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                names += [item["Key"][start:] for item in page.get("Contents") or []]
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"listing {self.url(prefix)} failed", error) from error
        return sorted(names)

    def exists(self, name: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                return False
            raise _s3_error(f"reading {self.url(name)} failed", error) from error
        except BotoCoreError as error:
            raise _s3_error(f"reading {self.url(name)} failed", error) from error
        return True

    def read(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            with contextlib.closing(body):
                return bytes(body.read())
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"reading {self.url(name)} failed", error) from error

    def write(self, name: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"writing {self.url(name)} failed", error) from error

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*"
            )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise _s3_error(f"writing {self.url(name)} failed", error) from error
        except BotoCoreError as error:
            raise _s3_error(f"writing {self.url(name)} failed", error) from error
        return True

    def delete(self, name: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(f"deleting {self.url(name)} failed", error) from error

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Writer]:
        from botocore.exceptions import BotoCoreError, ClientError

        upload = _Upload(self._client, self.bucket, self._key(name), self.part_size)
        try:
            yield upload
            upload.complete()
        except (BotoCoreError, ClientError) as error:
            upload.abort()
            raise _s3_error(f"writing {self.url(name)} failed", error) from error
        except BaseException:
            upload.abort()
            raise
