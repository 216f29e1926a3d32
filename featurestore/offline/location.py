"""Where the offline store lives: a local directory or an object store (``s3://``, ``gs://``).

``offline_store.path`` is either a local path (relative to the repository) or a URI:

    data/offline                     a pathlib.Path, exactly as before
    s3://bucket/prefix               Amazon S3 or an S3-compatible server (pyarrow.fs.S3FileSystem)
    gs://bucket/prefix               Google Cloud Storage (pyarrow.fs.GcsFileSystem)

A URI becomes an ``ObjectPath``: plain, picklable data (scheme, ``bucket/key`` and the store
``ObjectStoreOptions``) with the few ``pathlib`` methods the layout uses (``/``, ``name``,
``parent``, ``exists``, ``is_dir``, ``iterdir``, ``glob``, ``unlink``, ``stat``), so the layout
code reads the same for both. Beam workers get the ``ObjectPath`` itself and open the filesystem
from it in their own process (``ObjectPath.filesystem``, cached per process); no filesystem
object is ever pickled. Credentials come from the environment of each process (the standard
AWS variables, or GCS application-default credentials), never from featurestore.yaml.

Whole-file writes are atomic on both (``write_parquet``, ``put_file``):

* local: a temporary file beside the target, fsynced, renamed over it (``os.replace``);
* object store: the file's bytes are first complete (in memory, or in a local temporary
  file), then sent with one output stream: a single PUT (or an S3 multipart upload / GCS
  resumable upload for large files), which the store makes visible only when it is complete.
  A reader sees the old object or the new one, never half, and a failure before the end leaves
  the old object. There is no rename on an object store, and none is needed.

    >>> p = resolve("s3://bucket/offline", Path("/repo"), ObjectStoreOptions())
    >>> str(p / "demo" / "clicks"), (p / "demo").name
    ('s3://bucket/offline/demo/clicks', 'demo')
    >>> resolve("data/offline", Path("/repo"), ObjectStoreOptions())
    PosixPath('/repo/data/offline')
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

__all__ = [
    "SCHEMES",
    "ObjectPath",
    "ObjectStoreOptions",
    "OfflinePath",
    "coerce",
    "fetch",
    "filesystem_and_path",
    "is_remote",
    "parquet_rows",
    "parquet_writer",
    "put_file",
    "read_ipc",
    "read_table",
    "remove_tree",
    "resolve",
    "write_ipc",
    "write_parquet",
]

#: URI schemes of object stores, and the pyarrow filesystem each opens.
SCHEMES = {"s3": "S3FileSystem", "gs": "GcsFileSystem", "gcs": "GcsFileSystem"}


@dataclass(frozen=True)
class ObjectStoreOptions:
    """How to reach the object store (``offline_store`` in featurestore.yaml), as plain data.

    ``endpoint_override``: ``http://127.0.0.1:9000`` for an S3-compatible server (MinIO, moto,
    Ceph) or a GCS emulator; None for the cloud's own. ``region``: the S3 region (None: the AWS
    SDK's default chain).
    """

    endpoint_override: str | None = None
    region: str | None = None


@dataclass(frozen=True, order=True)
class ObjectPath:
    """A file or "directory" (a key prefix) in an object store; see the module docstring."""

    scheme: str
    #: ``bucket/key``, without a leading or trailing slash.
    path: str
    options: ObjectStoreOptions = field(default=ObjectStoreOptions(), compare=False)
    #: What a listing said this is ("file", "dir"), saving a request; None: not known.
    kind: str | None = field(default=None, compare=False, repr=False)
    #: The modification time a listing gave (seconds since the epoch); None: not known.
    mtime: float | None = field(default=None, compare=False, repr=False)

    # -- names ------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __truediv__(self, part: str | os.PathLike[str]) -> ObjectPath:
        part = str(part).strip("/")
        return ObjectPath(self.scheme, f"{self.path}/{part}" if part else self.path, self.options)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        head = self.path.rsplit("/", 1)[0] if "/" in self.path else self.path
        return ObjectPath(self.scheme, head, self.options)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def relative_to(self, other: ObjectPath) -> str:
        prefix = other.path + "/"
        if not self.path.startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return self.path[len(prefix) :]

    # -- the store --------------------------------------------------------------------------------
    def filesystem(self) -> pafs.FileSystem:
        """This process's filesystem for the path's store (opened once per process)."""
        return _filesystem(self.scheme, self.options)

    def _info(self) -> Any:
        return self.filesystem().get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        if self.kind is not None:
            return True
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        if self.kind is not None:
            return self.kind == "dir"
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        if self.kind is not None:
            return self.kind == "file"
        return self._info().type == pafs.FileType.File

    def stat(self) -> SimpleNamespace:
        if self.mtime is not None:
            return SimpleNamespace(st_mtime=self.mtime)
        info = self._info()
        if info.type.name == "NotFound":
            raise FileNotFoundError(str(self))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return SimpleNamespace(st_mtime=mtime, st_size=info.size or 0)

    def iterdir(self) -> Iterator[ObjectPath]:
        """The direct children (files and prefixes), in name order."""
        yield from self._list(recursive=False)

    def _list(self, recursive: bool) -> list[ObjectPath]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        out = []
        for info in self.filesystem().get_file_info(selector):
            kind = "dir" if info.type == pafs.FileType.Directory else "file"
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            out.append(ObjectPath(self.scheme, info.path.strip("/"), self.options, kind, mtime))
        return sorted(out)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Entries matching a relative pattern of ``*``-style parts (``date=*/*.parquet``), from
        one recursive listing: a prefix listing is one request per 1,000 keys."""
        want = pattern.strip("/").split("/")
        depth = len(want)
        for child in self._list(recursive=depth > 1):
            rel = child.relative_to(self).split("/")
            if len(rel) == depth and all(fnmatch.fnmatchcase(r, w) for r, w in zip(rel, want)):
                yield child

    def unlink(self, missing_ok: bool = False) -> None:
        import pyarrow.fs as pafs

        if not missing_ok or self._info().type != pafs.FileType.NotFound:
            self.filesystem().delete_file(self.path)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store has no directories, a key's prefix is enough."""

    def rmdir(self) -> None:
        """Like ``Path.rmdir``: OSError unless nothing is under this prefix."""
        if self._list(recursive=False):
            raise OSError(f"{self} is not empty")
        remove_tree(self)


OfflinePath = Path | ObjectPath

_FILESYSTEMS: dict[tuple[str, ObjectStoreOptions], Any] = {}
_LOCK = threading.Lock()


def _filesystem(scheme: str, options: ObjectStoreOptions) -> pafs.FileSystem:
    key = (scheme, options)
    with _LOCK:
        found = _FILESYSTEMS.get(key)
        if found is None:
            found = _FILESYSTEMS[key] = _open(scheme, options)
        return found


def _open(scheme: str, options: ObjectStoreOptions) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    endpoint, http = options.endpoint_override, None
    if endpoint and "://" in endpoint:
        http, _, endpoint = endpoint.partition("://")
    if SCHEMES[scheme] == "S3FileSystem":
        kwargs: dict[str, Any] = {
            # Files below Arrow's part size (10 MiB) go up as one PUT at close, not as a
            # multipart upload: fewer requests, and equally atomic (module docstring).
            "allow_delayed_open": True,
        }
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        if http:
            kwargs["scheme"] = http
        if options.region:
            kwargs["region"] = options.region
        return pafs.S3FileSystem(**kwargs)
    kwargs = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if http:
        kwargs["scheme"] = http
    return pafs.GcsFileSystem(**kwargs)


def resolve(value: str, root: Path, options: ObjectStoreOptions) -> OfflinePath:
    """``offline_store.path`` as a local ``Path`` (relative to ``root``) or an ``ObjectPath``."""
    check_uri(value)
    scheme, sep, rest = str(value).partition("://")
    if not sep:
        p = Path(value).expanduser()
        return p if p.is_absolute() else root / p
    return ObjectPath(scheme.lower(), rest.strip("/"), options)


def check_uri(value: str) -> None:
    """A ValueError saying what is accepted, for a URI this store cannot open."""
    scheme, sep, rest = str(value).partition("://")
    if not sep:
        head = str(value).split(":", 1)[0].lower()
        if ":" in str(value) and head in SCHEMES:  # s3:/bucket/x, a typo, not a local path
            raise ValueError(f"{value!r} looks like an object store missing a slash; use {head}://bucket/prefix")
        return
    if rest.startswith("/"):
        raise ValueError(f"{value!r} names no bucket (an empty first segment); use {scheme}://bucket/prefix")
    if scheme.lower() not in SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme + '://'!r} in {value!r}; use a local path, "
            "s3://bucket/prefix or gs://bucket/prefix"
        )
    if not rest.strip("/"):
        raise ValueError(f"{value!r} names no bucket; use {scheme}://bucket/prefix")


def coerce(value: OfflinePath | str) -> OfflinePath:
    """A path given as text (a local path, as Beam transforms were given) or a path object."""
    return value if isinstance(value, (Path, ObjectPath)) else Path(value)


def is_remote(path: OfflinePath | str) -> bool:
    return isinstance(path, ObjectPath)


def filesystem_and_path(path: OfflinePath | str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path in it, for pyarrow readers (``filesystem=``)."""
    import pyarrow.fs as pafs

    if isinstance(path, ObjectPath):
        return path.filesystem(), path.path
    return pafs.LocalFileSystem(), str(path)


# -- reading ---------------------------------------------------------------------------------------


def read_table(path: OfflinePath | str, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (or the given columns of it)."""
    import pyarrow.parquet as pq

    if isinstance(path, ObjectPath):
        with path.filesystem().open_input_file(path.path) as source:
            return pq.read_table(source, columns=columns)
    return pq.read_table(path, columns=columns)


def parquet_rows(path: OfflinePath | str) -> int:
    """Rows of a Parquet file, from its footer; 0 when the file does not exist."""
    import pyarrow.parquet as pq

    path = coerce(path)
    if not path.exists():
        return 0
    if isinstance(path, ObjectPath):
        with path.filesystem().open_input_file(path.path) as source:
            return pq.ParquetFile(source).metadata.num_rows
    return pq.ParquetFile(path).metadata.num_rows


def read_ipc(path: OfflinePath | str) -> pa.Table:
    """An Arrow IPC file (the batch job's staging files)."""
    import pyarrow as pa

    if isinstance(path, ObjectPath):
        with path.filesystem().open_input_file(path.path) as source:
            return pa.ipc.open_file(source).read_all()
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def fetch(files: list[Any], directory: Path, base: OfflinePath) -> list[Path]:
    """Local copies of ``files`` (object paths under ``base``) at the same relative paths under
    ``directory``, in the same order; local files are returned as they are. Several files are
    copied at once (each is a streamed GET, memory stays small)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.fs as pafs

    def one(path: Any) -> Path:
        if not isinstance(path, ObjectPath):
            return Path(path)
        assert isinstance(base, ObjectPath)
        local = directory / path.relative_to(base)
        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            path.path,
            str(local),
            source_filesystem=path.filesystem(),
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return local

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, files))


# -- writing ---------------------------------------------------------------------------------------


def write_ipc(batches: list[pa.RecordBatch], target: OfflinePath) -> None:
    """A new staging file; its name is unique, so nobody reads it before it is complete."""
    import pyarrow as pa

    if isinstance(target, ObjectPath):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, batches[0].schema) as writer:
            for b in batches:
                writer.write_batch(b)
        _put_bytes(sink.getvalue(), target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)


def write_parquet(table: pa.Table, target: OfflinePath, **options: Any) -> None:
    """Write ``table`` to ``target`` so that readers see the old file or the new one, never
    half (the module docstring says how, per store). ``options`` go to ``pq.write_table``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(target, ObjectPath):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        _put_bytes(sink.getvalue(), target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # A crash inside an earlier write may have left a temporary file behind; readers ignore it
    # (hidden name), and the next write of the same target removes it.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, **options)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def parquet_writer(target: OfflinePath, schema: pa.Schema, **options: Any) -> Iterator[Any]:
    """A ``pq.ParquetWriter`` whose file appears at ``target`` only when the block ends without
    an error (written to a local temporary file first; memory holds what the caller writes at
    a time, not the whole file)."""
    import pyarrow.parquet as pq

    if isinstance(target, ObjectPath):
        handle, name = tempfile.mkstemp(prefix="featurestore-", suffix=".parquet")
        os.close(handle)
        tmp = Path(name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, **options) as writer:
            yield writer
        if isinstance(target, ObjectPath):
            put_file(tmp, target)
        else:
            tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def put_file(local: Path, target: ObjectPath) -> None:
    """Upload a complete local file as one object (atomic: see the module docstring)."""
    import pyarrow as pa

    with pa.memory_map(str(local)) as source:  # mapped, not read into memory
        _put_bytes(source.read_buffer(), target)


def _put_bytes(data: Any, target: ObjectPath) -> None:
    # The bytes are complete before the stream opens and go in with ONE write, so the store is
    # never handed a part of them as if it were all. pyarrow has no abort for an upload, and a
    # stream dropped unclosed is closed by its destructor (which would complete the upload with
    # what it has): with one write there is no "part" to complete. Small files (below Arrow's
    # 10 MiB part size) are one PUT at close; larger ones a multipart upload, whose completion
    # fails, leaving the old object, when a part failed.
    out = target.filesystem().open_output_stream(target.path)
    out.write(data)
    out.close()


def remove_tree(path: OfflinePath) -> None:
    """Delete a directory (or key prefix) and everything under it; nothing if it is absent."""
    if isinstance(path, ObjectPath):
        fs = path.filesystem()
        try:
            fs.delete_dir(path.path)
        except FileNotFoundError:
            pass
        return
    shutil.rmtree(path, ignore_errors=True)
