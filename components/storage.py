"""The one place where mammo touches files: a local path or ``gs://bucket/prefix``, one API for both.

Listing (:func:`list_files`, :func:`scan_files`, :func:`list_children`) returns :class:`Entry`
objects; :func:`open_read` is seekable and, on GCS, reads lazily in ranged downloads (a DICOM
header costs a few small requests, never the 50 MB object); whole files move with :func:`read_bytes`,
:func:`write_bytes`, :func:`upload_file`, :func:`download_file`, :func:`copy` (create-only with
``if_absent``) and :func:`delete`.

Local listings never follow a link out of the root and never open FIFOs or devices (they are
listed with ``Entry.problem`` set). Transient GCS errors (429, 5xx, dropped connections, timeouts)
are retried with exponential backoff: reads within :data:`READ_DEADLINE_S`, so an unreachable
bucket fails in seconds with one line naming the URI, writes within two minutes. Other errors
(404, 403) surface at once as :class:`StorageError`. With ``STORAGE_EMULATOR_HOST`` set the client
talks anonymously to that emulator (tests).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
#: block size of lazy ranged reads (a DICOM header fits in the first block)
READ_BLOCK = 64 * 1024
#: chunk size when streaming an object to a local file
COPY_CHUNK = 8 * 1024 * 1024


def _transient_types() -> tuple[type[BaseException], ...]:
    import requests

    return (
        api_exceptions.TooManyRequests,
        api_exceptions.InternalServerError,
        api_exceptions.BadGateway,
        api_exceptions.ServiceUnavailable,
        api_exceptions.GatewayTimeout,
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.Timeout,
        ConnectionError,
        TimeoutError,
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: throttling, server errors, dropped connections, timeouts."""
    return isinstance(exc, _transient_types())


#: retry policy of GCS writes (exponential backoff, 2 minutes in all)
RETRY = api_retry.Retry(predicate=is_transient, initial=0.1, maximum=10.0, multiplier=2.0, timeout=120.0)
#: seconds within which a GCS read or listing (retries included) succeeds or fails with one line
READ_DEADLINE_S = 20.0
#: retry policy of GCS reads and listings
READ_RETRY = RETRY.with_timeout(READ_DEADLINE_S)
#: (connect, read) timeout of one GCS request in seconds
REQUEST_TIMEOUT = (5.0, 30.0)

# problems of listed files (Entry.problem), also the reject reasons ingest uses
PATH_OUTSIDE_ROOT = "path_outside_root"
NOT_A_REGULAR_FILE = "not_a_regular_file"


class StorageError(RuntimeError):
    """A file or object could not be read or written (the message names the URI)."""


class NotRegularFile(StorageError):
    """A local path is a FIFO, device, socket or directory: refused without reading from it."""


class AlreadyExists(StorageError):
    """A create-only write or copy found its target already there (on GCS: precondition 412)."""


@dataclass(frozen=True)
class Entry:
    """One file of a listed tree."""

    #: absolute local path or ``gs://bucket/name``
    uri: str
    #: POSIX path relative to the listed root
    rel: str
    size: int
    #: why the file must not be read ("" for a readable regular file): PATH_OUTSIDE_ROOT, NOT_A_REGULAR_FILE
    problem: str = ""
    #: what the problem is, in words
    detail: str = ""
    #: last modification, POSIX seconds (0.0 when unknown)
    updated: float = 0.0
    #: what changes when the content may have: the object generation on GCS, mtime in ns locally
    version: str = ""

    @property
    def name(self) -> str:
        return self.rel.rpartition("/")[2]

    @property
    def parent(self) -> str:
        """Relative folder of the file ('' at the root)."""
        return self.rel.rpartition("/")[0]


# -- URIs ----------------------------------------------------------------------------------------


def is_gcs(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    if not is_gcs(uri):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, name


def normalize_root(uri: str | os.PathLike) -> str:
    """A root URI in canonical form: ``gs://bucket/prefix`` without a trailing slash, or an absolute path."""
    text = str(uri)
    if is_gcs(text):
        bucket, name = split_gcs(text)
        name = name.strip("/")
        return f"{GCS_SCHEME}{bucket}/{name}" if name else f"{GCS_SCHEME}{bucket}"
    return str(Path(text).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base`` joined with POSIX ``parts`` (for GCS with '/', locally with the OS separator)."""
    base = str(base)
    if is_gcs(base):
        tail = "/".join(p.strip("/") for p in parts if p)
        return base.rstrip("/") + ("/" + tail if tail else "")
    return str(Path(base, *parts))


# -- the client ----------------------------------------------------------------------------------

_client_lock = threading.Lock()
_clients: dict[str | None, Client] = {}


def client() -> Client:
    """A process-wide ``google.cloud.storage.Client`` (one per emulator host, for tests).

    Uses Application Default Credentials; without any, falls back to an anonymous client (public
    buckets only) and says so. With ``STORAGE_EMULATOR_HOST`` set the client is anonymous.
    """
    from google.cloud import storage as gcs

    key = os.environ.get("STORAGE_EMULATOR_HOST")
    with _client_lock:
        if key not in _clients:
            if key:
                _clients[key] = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"))
            else:
                from google.auth.exceptions import DefaultCredentialsError

                try:
                    _clients[key] = gcs.Client()
                except (DefaultCredentialsError, OSError) as exc:
                    log.warning("no Google Cloud credentials (%s): using an anonymous client", type(exc).__name__)
                    _clients[key] = gcs.Client.create_anonymous_client()
        return _clients[key]


def _blob(uri: str) -> Blob:
    bucket, name = split_gcs(uri)
    if not name:
        raise ValueError(f"{uri!r} names a bucket, not an object")
    return client().bucket(bucket).blob(name)


def _gcs_error(uri: str, exc: Exception) -> StorageError:
    if isinstance(exc, api_exceptions.NotFound):
        return StorageError(f"{uri}: no such object")
    if isinstance(exc, api_exceptions.RetryError) or is_transient(exc):
        cause = getattr(exc, "cause", None) or exc
        return StorageError(f"{uri}: Google Cloud Storage not reachable within {READ_DEADLINE_S:.0f} s "
                            f"({type(cause).__name__})")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StorageError(f"{uri}: {type(exc).__name__}: {first[:300]}")


#: what a GCS call may raise that becomes one StorageError line
_GCS_ERRORS = (api_exceptions.GoogleAPIError, ConnectionError, TimeoutError, OSError)


# -- listing -------------------------------------------------------------------------------------


def list_files(root: str | os.PathLike) -> list[Entry]:
    """Every readable regular file under ``root`` (recursively), sorted by relative path; [] if none.

    What :func:`scan_files` lists without a problem: links leaving the root, FIFOs, devices and
    sockets are left out.
    """
    return [e for e in scan_files(root) if not e.problem]


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _local_entry(base: Path, root_real: str, p: Path) -> Entry:
    """One listed local path: a regular file inside the root, or an Entry saying why it is not one."""
    rel = p.relative_to(base).as_posix()
    try:
        st = os.lstat(p)
    except OSError as exc:
        return Entry(str(p), rel, 0, NOT_A_REGULAR_FILE, f"cannot stat ({type(exc).__name__})")
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(p)
        if not _inside(real, root_real):
            return Entry(str(p), rel, 0, PATH_OUTSIDE_ROOT, "symbolic link to a path outside the data root")
        try:
            st = os.stat(p)
        except OSError:
            return Entry(str(p), rel, 0, NOT_A_REGULAR_FILE, "dangling symbolic link")
    if not stat.S_ISREG(st.st_mode):
        kind = ("named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "directory" if stat.S_ISDIR(st.st_mode) else "special file")
        return Entry(str(p), rel, 0, NOT_A_REGULAR_FILE, f"a {kind}, not a regular file")
    return Entry(str(p), rel, int(st.st_size), updated=st.st_mtime, version=str(st.st_mtime_ns))


def scan_files(root: str | os.PathLike) -> list[Entry]:
    """Every file under ``root`` (recursively), sorted by relative path, with problems marked.

    One pass: ``os.walk`` locally (nothing is opened: each name is checked with ``lstat``; links
    are followed only to files inside the root, linked folders are not entered), one paginated
    ``list_blobs(prefix=...)`` on GCS (objects are always regular; "folder" placeholders ending in
    '/' are skipped). [] if the root does not exist.
    """
    root = normalize_root(root)
    entries: list[Entry] = []
    if is_gcs(root):
        bucket, prefix = split_gcs(root)
        prefix = prefix + "/" if prefix else ""
        try:
            for blob in client().list_blobs(bucket, prefix=prefix, retry=READ_RETRY, timeout=REQUEST_TIMEOUT):
                if blob.name.endswith("/"):
                    continue
                rel = blob.name[len(prefix):]
                updated = blob.updated.timestamp() if blob.updated else 0.0
                entries.append(Entry(f"{GCS_SCHEME}{bucket}/{blob.name}", rel, int(blob.size or 0),
                                     updated=updated, version=str(blob.generation)))
        except _GCS_ERRORS as exc:
            raise _gcs_error(root, exc) from None
    else:
        base = Path(root)
        root_real = os.path.realpath(base)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for d in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                dirnames.remove(d)  # a linked folder is not entered: listed as one refused entry
                p = Path(dirpath, d)
                inside = _inside(os.path.realpath(p), root_real)
                entries.append(Entry(str(p), p.relative_to(base).as_posix(), 0,
                                     NOT_A_REGULAR_FILE if inside else PATH_OUTSIDE_ROOT,
                                     "symbolic link to a folder (not followed)" if inside
                                     else "symbolic link to a folder outside the data root"))
            for f in filenames:
                entries.append(_local_entry(base, root_real, Path(dirpath, f)))
    entries.sort(key=lambda e: e.rel)
    log.debug("listed %d files under %s", len(entries), root)
    return entries


def is_dir(uri: str | os.PathLike) -> bool:
    """A local directory, or a GCS prefix with at least one object under it."""
    uri = normalize_root(uri)
    if not is_gcs(uri):
        return Path(uri).is_dir()
    bucket, prefix = split_gcs(uri)
    try:
        blobs = client().list_blobs(bucket, prefix=(prefix + "/") if prefix else "", max_results=1,
                                    retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
        return any(True for _ in blobs)
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from None


def list_children(uri: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(folder names, file names) directly under ``uri``, each sorted; ([], []) if it does not exist.

    On GCS one delimited listing: the "folders" are the object-name prefixes one level down.
    """
    uri = normalize_root(uri)
    if not is_gcs(uri):
        try:
            children = list(Path(uri).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        return (sorted(p.name for p in children if p.is_dir() and not p.is_symlink()),
                sorted(p.name for p in children if not (p.is_dir() and not p.is_symlink())))
    bucket, prefix = split_gcs(uri)
    prefix = prefix + "/" if prefix else ""
    try:
        pages = client().list_blobs(bucket, prefix=prefix, delimiter="/", retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
        files = [blob.name[len(prefix):] for blob in pages]  # the prefixes arrive with the pages
        folders = [p[len(prefix):].rstrip("/") for p in pages.prefixes]
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from None
    return sorted(folders), sorted(f for f in files if f)


def size(uri: str | os.PathLike) -> int:
    """The size in bytes of a file / object (StorageError naming the URI when there is none)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            st = os.stat(uri)
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{uri}: not a regular file")
        return int(st.st_size)
    blob = _blob(uri)
    try:
        blob.reload(retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from None
    return int(blob.size or 0)


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file / object exists."""
    uri = str(uri)
    if not is_gcs(uri):
        return Path(uri).is_file()
    try:
        return bool(_blob(uri).exists(retry=READ_RETRY, timeout=REQUEST_TIMEOUT))
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from None


# -- reading -------------------------------------------------------------------------------------


def _open_local(path: str) -> IO[bytes]:
    """A local file opened for reading, refused (without blocking) unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path}: not a regular file (a FIFO, device, socket or folder); not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(uri: str | os.PathLike, start: int = 0, end: int | None = None) -> bytes:
    """The bytes ``[start, end)`` of a file (the whole file by default)."""
    uri = str(uri)
    if not is_gcs(uri):
        with _open_local(uri) as fh:
            fh.seek(start)
            return fh.read() if end is None else fh.read(max(0, end - start))
    if end is not None and end <= start:
        return b""
    try:
        if start == 0 and end is None:
            return _blob(uri).download_as_bytes(retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
        # a partial download cannot be checksummed; download_as_bytes' `end` is inclusive
        return _blob(uri).download_as_bytes(
            start=start, end=None if end is None else end - 1, checksum=None, retry=READ_RETRY,
            timeout=REQUEST_TIMEOUT,
        )
    except api_exceptions.RequestRangeNotSatisfiable:
        return b""
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from None


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


class GcsRangeReader(io.RawIOBase):
    """A seekable, read-only raw stream over one GCS object, fetched by ranged downloads.

    Wrap it in ``io.BufferedReader`` (as :func:`open_read` does) so small reads become
    :data:`READ_BLOCK`-sized requests. The object size is taken from the listing when known,
    otherwise fetched once (only ``seek(..., SEEK_END)`` needs it).
    """

    def __init__(self, uri: str, size: int | None = None):
        super().__init__()
        self.uri = uri
        self._blob = _blob(uri)
        self._size = size
        self._pos = 0
        #: bytes downloaded so far (for tests and logs)
        self.bytes_fetched = 0

    @property
    def name(self) -> str:  # io.BufferedReader and pydicom look for it
        return self.uri

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _object_size(self) -> int:
        if self._size is None:
            try:
                self._blob.reload(retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
            except _GCS_ERRORS as exc:
                raise _gcs_error(self.uri, exc) from None
            self._size = int(self._blob.size or 0)
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._object_size() + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"{self.uri}: negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = len(buffer)
        if n == 0 or (self._size is not None and self._pos >= self._size):
            return 0
        data = read_bytes(self.uri, self._pos, self._pos + n)
        k = len(data)
        buffer[:k] = data
        self._pos += k
        self.bytes_fetched += k
        return k


@contextlib.contextmanager
def open_read(uri: str | os.PathLike, size: int | None = None, block: int = READ_BLOCK) -> Iterator[IO[bytes]]:
    """A seekable binary file object for reading; lazily fetched in ``block``-sized ranges on GCS."""
    uri = str(uri)
    if not is_gcs(uri):
        with _open_local(uri) as fh:
            yield fh
        return
    raw = GcsRangeReader(uri, size=size)
    with io.BufferedReader(raw, buffer_size=block) as fh:
        yield fh


# -- writing -------------------------------------------------------------------------------------


def write_bytes(uri: str | os.PathLike, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write a whole file / object (parents created locally). Rewriting the same bytes is idempotent,
    so uploads are retried like reads."""
    uri = str(uri)
    if not is_gcs(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)
        return
    try:
        _blob(uri).upload_from_string(data, content_type=content_type, retry=RETRY)
    except api_exceptions.GoogleAPICallError as exc:
        raise _gcs_error(uri, exc) from exc


def write_text(uri: str | os.PathLike, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
    write_bytes(uri, text.encode("utf-8"), content_type=content_type)


def upload_file(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy one local file to ``uri`` (an object, or a local path whose parents are created)."""
    uri = str(uri)
    if not is_gcs(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, uri)
        return
    try:
        _blob(uri).upload_from_filename(str(local), retry=RETRY)
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from exc


def download_file(uri: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy one file / object to the local path ``dest`` (parents created), whole or not at all:
    it is written beside ``dest`` and renamed into place, so an interrupted download leaves no
    truncated file under the final name."""
    uri, dest = str(uri), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        if is_gcs(uri):
            _blob(uri).download_to_filename(str(partial), retry=READ_RETRY, timeout=REQUEST_TIMEOUT)
        else:
            with _open_local(uri) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out, COPY_CHUNK)
        partial.replace(dest)
    except _GCS_ERRORS as exc:
        partial.unlink(missing_ok=True)
        if not is_gcs(uri):
            raise
        raise _gcs_error(uri, exc) from exc
    return dest


def copy(src: str | os.PathLike, dst: str | os.PathLike, *, if_absent: bool = False) -> None:
    """Copy a file / object to ``dst`` (server-side between GCS objects).

    With ``if_absent`` the copy only creates: an existing ``dst`` raises :class:`AlreadyExists`
    (on GCS also when it appears between the check and the copy: the ``if_generation_match=0``
    precondition, which the test emulator does not enforce, so its tests see the check).
    """
    src, dst = str(src), str(dst)
    if is_gcs(src) != is_gcs(dst):
        raise ValueError(f"copy {src} -> {dst}: use upload_file / download_file between local and GCS")
    if not is_gcs(dst):
        if if_absent and os.path.lexists(dst):
            raise AlreadyExists(f"{dst} already exists")
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return
    if if_absent and exists(dst):  # the early, readable refusal; the precondition closes the race
        raise AlreadyExists(f"{dst} already exists")
    source = _blob(src)
    dst_bucket, dst_name = split_gcs(dst)
    precondition = {"if_generation_match": 0} if if_absent else {}
    try:
        source.bucket.copy_blob(source, client().bucket(dst_bucket), dst_name, retry=RETRY, **precondition)
    except api_exceptions.PreconditionFailed:
        raise AlreadyExists(f"{dst} already exists") from None
    except _GCS_ERRORS as exc:
        raise _gcs_error(src, exc) from exc


def delete(uri: str | os.PathLike, *, missing_ok: bool = True) -> bool:
    """Remove a file / object; False when there was none (an error unless ``missing_ok``)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            os.unlink(uri)
            return True
        except FileNotFoundError:
            if missing_ok:
                return False
            raise StorageError(f"{uri}: no such file") from None
    try:
        _blob(uri).delete(retry=RETRY, timeout=REQUEST_TIMEOUT)
        return True
    except api_exceptions.NotFound:
        if missing_ok:
            return False
        raise StorageError(f"{uri}: no such object") from None
    except _GCS_ERRORS as exc:
        raise _gcs_error(uri, exc) from exc


def upload_tree(local_dir: str | os.PathLike, uri: str) -> int:
    """Copy every file under ``local_dir`` to ``uri`` (``gs://bucket/prefix``), keeping relative paths.

    Returns the number of files copied.
    """
    local_dir = Path(local_dir)
    n = 0
    for entry in list_files(local_dir):
        upload_file(entry.uri, join(uri, entry.rel))
        n += 1
    return n
