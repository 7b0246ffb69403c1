"""The TF Serving model repository: push, prune, champion and rollback, on a local folder or gs://.

TF Serving watches ``<serving_root>/<model_name>/`` and loads every sub-directory whose name is a
version number; with the default version policy it serves the highest one. This module keeps that
repository healthy:

* **What counts as a version.** A *directory* whose name is a canonical positive integer below
  2^63 (TF Serving's versions are int64): ``1``, ``42``; not ``007``, ``+3``, ``1e3`` or
  ``99999999999999999999``. Everything else (files, dot-names, other names) is ignored: never
  served by this module's rules, never the champion, never pruned. A version is *complete* when it
  holds ``saved_model.pb``.
* **A version is never seen half-written, and never overwritten.** A push stages the copy under a
  dot-name, copies ``saved_model.pb`` last, then publishes: on disk by one atomic ``rename``; on
  GCS (no rename) by server-side copies into the version prefix, ``saved_model.pb`` last, each with
  the precondition "object does not exist yet". An interrupted push leaves either nothing under a
  version name or a version without ``saved_model.pb`` (not loadable, not counted as complete).
* **New versions only go up.** The next version is 1 + the highest version-like name present,
  complete or not, and also above any *file* with such a name (a stray file named ``3`` does not
  block pushes: the push goes to 4). Two pushes racing for the same number: on disk the loser
  takes the next free number (without copying again); on GCS the loser fails with a clear error.
* **Old versions go, rollbacks are new versions.** :func:`prune_versions` keeps the last K complete
  versions. :func:`rollback` first loads the source version with TF's own SavedModel loader and
  checks its answer to the reference image against its record, then re-publishes a copy of it as
  the new highest version: TF Serving's default ``latest`` policy then serves it without any
  reconfiguration, and the promotion gate's champion is the rolled-back model.
* **The champion** (:func:`current_champion`) is the highest complete version with its model
  record; a record that is missing or not JSON makes it "a champion without a record" (said in
  ``record_error`` and the log), never a crash.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from mammo.components import storage
from mammo.components.contracts import SAVED_MODEL_PB
from mammo.components.deploy.export import METADATA_RELPATH, MODEL_CARD_RELPATH, reference_image, utc_now

logger = logging.getLogger(__name__)

#: staging names: start with a dot (TF Serving only loads integer names)
STAGING_PREFIX = ".tmp-"
_DELETING_PREFIX = ".deleting-"
#: a staging leftover older than this is a crashed push, removed by :func:`prune_versions`
STALE_STAGING_S = 24 * 3600
#: TF Serving's version numbers are int64
MAX_VERSION = 2**63 - 1
#: concurrent pushes on disk: how many successive numbers a push tries
PUSH_ATTEMPTS = 20

_CANONICAL = re.compile(r"[1-9][0-9]{0,18}")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def version_number(name: str) -> int | None:
    """The version a directory name stands for, or None (not a canonical integer in [1, 2^63))."""
    if _CANONICAL.fullmatch(name):
        value = int(name)
        if value <= MAX_VERSION:
            return value
    return None


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the integer version and its directory (absolute path or ``gs://`` URI)."""

    version: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VersionTaken(FileExistsError):
    """The version was created by someone else during the push."""


# -- local folder ------------------------------------------------------------------------------


def _ordered_files(export_dir: Path) -> list[str]:
    """Relative paths of every file of a SavedModel, ``saved_model.pb`` last (it marks it complete)."""
    files = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file())
    if SAVED_MODEL_PB not in files:
        raise FileNotFoundError(f"{export_dir} is not a SavedModel: {SAVED_MODEL_PB} is missing")
    files.remove(SAVED_MODEL_PB)
    return files + [SAVED_MODEL_PB]


def _publish_order(src: Path, overrides: Mapping[str, bytes]) -> list[str]:
    """The export's files plus added ``overrides``, ``saved_model.pb`` last."""
    files = _ordered_files(src)[:-1]
    return files + sorted(rel for rel in overrides if rel not in files and rel != SAVED_MODEL_PB) + [SAVED_MODEL_PB]


def _copy_saved_model(src: Path, dst: Path, overrides: Mapping[str, bytes] | None = None) -> None:
    """Copy a SavedModel with ``saved_model.pb`` last; ``overrides`` (relpath -> bytes) replace or add files."""
    overrides = overrides or {}
    for rel in _publish_order(src, overrides):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel in overrides:
            target.write_bytes(overrides[rel])
        else:
            shutil.copy2(src / rel, target)


class _LocalRepo:
    """``<root>/<model_name>`` on a local (or mounted) file system."""

    def __init__(self, root: str | Path, model_name: str) -> None:
        self.root = Path(root) / model_name

    def version_path(self, version: int) -> str:
        return str((self.root / str(version)).resolve())

    def _entries(self) -> list[Path]:
        try:
            return list(self.root.iterdir())
        except FileNotFoundError:
            return []

    def versions(self) -> dict[int, bool]:
        """Version directories -> whether they hold ``saved_model.pb`` (all else ignored)."""
        found = {}
        for p in self._entries():
            number = version_number(p.name)
            if number is not None and p.is_dir() and not p.is_symlink():
                found[number] = (p / SAVED_MODEL_PB).is_file()
        return found

    def taken(self) -> set[int]:
        """Every version-like name in use, whatever it is (a file named ``3`` takes 3)."""
        return {n for p in self._entries() if (n := version_number(p.name)) is not None}

    def read_bytes(self, version: int, relpath: str | Path) -> bytes | None:
        path = self.root / str(version) / relpath
        return path.read_bytes() if path.is_file() else None

    def publish(self, source: Path, version: int, overrides: Mapping[str, bytes], auto: bool) -> int:
        """Stage a copy and rename it to ``version`` (with ``auto``: the next free number on a race)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / str(version)).exists() and not auto:
            raise FileExistsError(f"{self.root / str(version)} already exists; a served version is never overwritten")
        # The staging directory is a sibling (same file system, so the final rename is atomic) whose
        # name starts with a dot: TF Serving only loads integer names and the version scan skips it.
        staging = self.root / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _copy_saved_model(source, staging, overrides)
            for _ in range(PUSH_ATTEMPTS):
                target = self.root / str(version)
                try:
                    if target.exists() or target.is_symlink():
                        raise VersionTaken(f"{target} appeared during the push")
                    # os.rename fails on a non-empty existing target (and a racing empty one holds no
                    # model), so this never replaces a loaded version
                    os.rename(staging, target)
                    return version
                except OSError as err:
                    if not isinstance(err, VersionTaken) and err.errno not in (errno.ENOTEMPTY, errno.EEXIST,
                                                                                errno.ENOTDIR, errno.EISDIR):
                        raise
                    if not auto:
                        raise VersionTaken(f"{target} was created by another push; a served version is "
                                           "never overwritten") from None
                    logger.info("version %d was taken by a concurrent push; trying the next number", version)
                    version = max(self.taken() | {version}) + 1
            raise VersionTaken(f"{self.root}: {PUSH_ATTEMPTS} version numbers were taken by concurrent pushes")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def delete_version(self, version: int) -> None:
        # Hide it first with one rename, so TF Serving never sees a half-deleted version.
        doomed = self.root / f"{_DELETING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.root / str(version), doomed)
        except FileNotFoundError:  # pruned by a concurrent run
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def download_version(self, version: int, dest: Path) -> Path:
        return self.root / str(version)  # already local: no copy needed

    def remove_stale_staging(self, older_than_s: float) -> list[str]:
        now, removed = time.time(), []
        for p in self._entries():
            try:
                stale = p.is_dir() and p.name.startswith((STAGING_PREFIX, _DELETING_PREFIX)) and \
                    now - p.stat().st_mtime > older_than_s
            except OSError:
                continue
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


# -- gs:// -------------------------------------------------------------------------------------


class _GcsRepo:
    """``gs://bucket/prefix/<model_name>``, every call through :mod:`storage` (its client and retries).

    GCS has no directories and no rename: a "version directory" is the object-name prefix
    ``<model>/<version>/``. Publishing uploads to a dot-named staging prefix, then copies server-side
    into the version prefix with ``saved_model.pb`` last, each copy create-only (the
    ``if_generation_match=0`` precondition), then deletes the staging objects.
    """

    def __init__(self, uri: str, model_name: str) -> None:
        self.root = storage.join(storage.normalize_root(uri), model_name)

    def version_path(self, version: int) -> str:
        return storage.join(self.root, str(version))

    def versions(self) -> dict[int, bool]:
        found = {}
        for name in storage.list_children(self.root)[0]:
            number = version_number(name)
            if number is not None:
                found[number] = storage.exists(storage.join(self.root, name, SAVED_MODEL_PB))
        return found

    def taken(self) -> set[int]:
        folders, files = storage.list_children(self.root)
        return {n for name in folders + files if (n := version_number(name)) is not None}

    def read_bytes(self, version: int, relpath: str | Path) -> bytes | None:
        uri = storage.join(self.version_path(version), Path(relpath).as_posix())
        return storage.read_bytes(uri) if storage.exists(uri) else None

    def publish(self, source: Path, version: int, overrides: Mapping[str, bytes], auto: bool) -> int:
        target = self.version_path(version)
        if storage.is_dir(target):
            raise FileExistsError(f"{target} already exists; a version is never overwritten")
        staging = storage.join(self.root, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
        files = _publish_order(source, overrides)
        copied: list[str] = []
        try:
            for rel in files:  # the slow part: nothing under a version name yet
                if rel in overrides:
                    storage.write_bytes(storage.join(staging, rel), overrides[rel])
                else:
                    storage.upload_file(source / rel, storage.join(staging, rel))
            if storage.is_dir(target):
                raise VersionTaken(f"{target} appeared during the push; never overwritten")
            for rel in files:  # saved_model.pb last: the version becomes loadable with the last copy
                storage.copy(storage.join(staging, rel), storage.join(target, rel), if_absent=True)
                copied.append(storage.join(target, rel))
        except BaseException as err:
            # our partial copies hold no saved_model.pb (not loadable), but remove them anyway; a
            # failed create-only copy means another writer owns the prefix, so touch nothing of it then
            if isinstance(err, storage.AlreadyExists):
                raise VersionTaken(f"{target} is being written by another push; "
                                   "a version is never overwritten") from None
            for uri in copied:
                _delete_quietly(uri)
            raise
        finally:
            for entry in storage.list_files(staging):
                _delete_quietly(entry.uri)
        return version

    def delete_version(self, version: int) -> None:
        entries = storage.list_files(self.version_path(version))
        # saved_model.pb first: from then on the remains are not a loadable version
        entries.sort(key=lambda e: e.rel != SAVED_MODEL_PB)
        for entry in entries:
            storage.delete(entry.uri)

    def download_version(self, version: int, dest: Path) -> Path:
        for entry in storage.list_files(self.version_path(version)):
            storage.download_file(entry.uri, dest / entry.rel)
        return dest

    def remove_stale_staging(self, older_than_s: float) -> list[str]:
        now, removed = time.time(), set()
        for folder in storage.list_children(self.root)[0]:
            if not folder.startswith(STAGING_PREFIX):
                continue
            for entry in storage.list_files(storage.join(self.root, folder)):
                if now - (entry.updated or now) > older_than_s:
                    _delete_quietly(entry.uri)
                    removed.add(folder)
        return sorted(removed)


def _delete_quietly(uri: str) -> None:
    try:
        storage.delete(uri)
    except storage.StorageError as err:  # best effort: a leftover staging object is ignored by TF Serving
        logger.warning("could not delete %s: %s", uri, err)


def _repo(serving_root: str | Path, model_name: str) -> _LocalRepo | _GcsRepo:
    root = str(serving_root)
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"model name {model_name!r}: must be a plain folder name")
    if root.startswith("gs://"):  # storage and google-cloud-storage are imported only then
        return _GcsRepo(root, model_name)
    if _URI_SCHEME.match(root):
        raise ValueError(f"serving root {root}: only local paths and gs:// URIs are supported")
    return _LocalRepo(root, model_name)


# -- operations --------------------------------------------------------------------------------


def list_versions(serving_root: str | Path, model_name: str) -> dict[int, bool]:
    """Every version under ``<serving_root>/<model_name>`` -> whether it is complete (loadable)."""
    return dict(sorted(_repo(serving_root, model_name).versions().items()))


def push_to_serving_root(export_dir: str | Path, serving_root: str | Path, model_name: str,
                         version: int | None = None, overrides: Mapping[str, bytes] | None = None) -> PushResult:
    """Publish an export as ``<serving_root>/<model_name>/<version>/`` without TF Serving ever loading it half-done.

    Args:
        export_dir: a SavedModel directory (from :func:`~mammo.components.deploy.export.export_serving_model`).
        serving_root: TF Serving's model base directory: a local path or ``gs://bucket/prefix``.
        version: the version to create; default 1 + the highest version-like name present.
        overrides: files (relative path -> content) written instead of / in addition to the export's.

    Raises:
        FileExistsError: the version already exists or was taken by a concurrent push.
        FileNotFoundError: ``export_dir`` holds no ``saved_model.pb``.
    """
    export_dir = Path(export_dir)
    if not (export_dir / SAVED_MODEL_PB).is_file():
        raise FileNotFoundError(f"{export_dir} is not a SavedModel: {SAVED_MODEL_PB} is missing")
    repo = _repo(serving_root, model_name)
    auto = version is None
    if auto:
        # above every version-like name, complete or not, directory or not
        version = max(repo.taken() | set(repo.versions()), default=0) + 1
    if not 1 <= int(version) <= MAX_VERSION:
        raise ValueError(f"version must be an integer in [1, 2^63), got {version}")
    if not auto and int(version) in repo.taken():
        raise FileExistsError(f"{repo.version_path(int(version))} already exists; a served version is never overwritten")
    version = repo.publish(export_dir, int(version), dict(overrides or {}), auto)
    path = repo.version_path(version)
    logger.info("pushed %s to %s (version %d)", export_dir, path, version)
    return PushResult(version=version, path=path)


def prune_versions(serving_root: str | Path, model_name: str, keep: int,
                   stale_staging_s: float = STALE_STAGING_S) -> list[int]:
    """Keep the ``keep`` highest complete versions; delete older ones (``keep <= 0``: keep all).

    Also removes incomplete versions older than the newest complete one, and staging leftovers
    older than ``stale_staging_s``. Returns the deleted version numbers.
    """
    repo = _repo(serving_root, model_name)
    removed_staging = repo.remove_stale_staging(stale_staging_s)
    if removed_staging:
        logger.info("removed stale staging leftovers %s", removed_staging)
    if keep <= 0:
        return []
    versions = repo.versions()
    complete = sorted((v for v, ok in versions.items() if ok), reverse=True)
    if not complete:
        return []
    kept = set(complete[:keep])
    newest = complete[0]
    doomed = sorted(v for v, ok in versions.items() if v not in kept and (ok or v < newest))
    for version in doomed:
        repo.delete_version(version)
    if doomed:
        logger.info("pruned %s versions %s (keeping %s)", model_name, doomed, sorted(kept))
    return doomed


def parse_record(data: bytes | None, where: str) -> tuple[dict[str, Any], str | None]:
    """A model record's JSON object, or ``({}, why)`` when it is missing or not a JSON object."""
    if data is None:
        return {}, f"{where} has no {METADATA_RELPATH.as_posix()}"
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        return {}, f"{where}: {METADATA_RELPATH.as_posix()} is not valid JSON ({err})"
    if not isinstance(record, dict):
        return {}, f"{where}: {METADATA_RELPATH.as_posix()} is not a JSON object"
    return record, None


def current_champion(serving_root: str | Path, model_name: str) -> dict[str, Any] | None:
    """The record of the served version (the highest complete one) plus ``version`` and ``path``, or None.

    A version whose record is missing or not JSON still counts as the champion: "a champion without
    a record", whose dict holds only ``version``, ``path`` and ``record_error`` (why), and a warning
    is logged. The gate then has no recorded metrics to compare with and says so.
    """
    repo = _repo(serving_root, model_name)
    complete = [v for v, ok in repo.versions().items() if ok]
    if not complete:
        return None
    version = max(complete)
    where = repo.version_path(version)
    record, error = parse_record(repo.read_bytes(version, METADATA_RELPATH), where)
    if error:
        logger.warning("champion without a record: %s", error)
        record = {"record_error": error}
    record.update(version=version, path=where)
    return record


def check_loadable(model_dir: Path, record: Mapping[str, Any], atol: float = 1e-4) -> None:
    """Load a version with TF's SavedModel loader and, when its record has the reference answer,
    check that the loaded model still gives it.

    Raises:
        ValueError: it does not load, lacks the serving signature, or answers differently.
    """
    import numpy as np

    from mammo.components.deploy.export import DEFAULT_SIGNATURE
    from mammo.components.deploy.serving_client import LocalModel, ServingError

    try:
        model = LocalModel(model_dir)
        reference = record.get("reference_prediction") or {}
        size = record.get("image_size")
        if reference.get("probabilities") and size:
            outputs = model.predict(DEFAULT_SIGNATURE, [reference_image(int(size))])
            diff = float(np.max(np.abs(np.asarray(outputs["probabilities"][0]) - np.asarray(reference["probabilities"]))))
            if not diff <= atol:
                raise ValueError(f"it answers the reference image differently from its record (max difference {diff:.3g})")
        else:
            logger.warning("%s records no reference answer: checked that it loads only", model_dir)
    except (ServingError, KeyError) as err:
        raise ValueError(f"{err}") from None


def rollback(serving_root: str | Path, model_name: str, to_version: int | None = None, wait_for_rest_url: str = "",
             wait_timeout_s: float = 300, poll_interval_s: float = 2.0, keep_versions: int = 0) -> PushResult:
    """Serve an earlier version again by publishing a copy of it as the new highest version.

    Args:
        to_version: the version to bring back; default the complete version just below the served one.
        wait_for_rest_url: TF Serving REST base URL: wait until the new version is AVAILABLE and
            check one prediction against the answer recorded when that model was exported.
        keep_versions: prune to this many complete versions afterwards (0: keep all).

    The source is loaded with TF's SavedModel loader (and checked against its recorded reference
    answer) before anything is published. The copy's record gains ``rolled_back_from`` /
    ``rolled_back_at`` and its model card a rollback note; the SavedModel itself is byte-identical.

    Raises:
        ValueError: nothing to roll back to, ``to_version`` is not a complete version, or it does not load.
    """
    from mammo.components.deploy.serving_client import check_served_prediction, wait_until_available

    repo = _repo(serving_root, model_name)
    complete = sorted(v for v, ok in repo.versions().items() if ok)
    if not complete:
        raise ValueError(f"{model_name} under {serving_root} has no complete version to roll back to")
    served = complete[-1]
    if to_version is None:
        if len(complete) < 2:
            raise ValueError(f"{model_name} under {serving_root} has only version {served}: nothing earlier to roll back to")
        to_version = complete[-2]
    if to_version not in complete:
        raise ValueError(f"version {to_version} of {model_name} under {serving_root} is not a complete version "
                         f"(complete versions: {complete})")
    if to_version == served:
        raise ValueError(f"version {to_version} is already the served version of {model_name}")

    with tempfile.TemporaryDirectory(prefix="mammo-rollback-") as tmp:
        source = repo.download_version(to_version, Path(tmp) / "version")
        where = repo.version_path(to_version)
        description, error = parse_record((source / METADATA_RELPATH).read_bytes()
                                          if (source / METADATA_RELPATH).is_file() else None, where)
        if error:
            logger.warning("rolling back to a version without a usable record: %s", error)
        try:
            check_loadable(source, description)
        except ValueError as err:
            raise ValueError(f"refusing to roll back to version {to_version} ({where}): it does not load or "
                             f"answer as recorded: {err}") from None
        description.update(rolled_back_from=to_version, rolled_back_at=utc_now(), replaced_version=served)
        card = (source / MODEL_CARD_RELPATH).read_text() if (source / MODEL_CARD_RELPATH).is_file() else ""
        note = (f"> **Rollback**: this version is a copy of version {to_version}, published on "
                f"{description['rolled_back_at']} to replace version {served}.\n\n")
        overrides = {
            METADATA_RELPATH.as_posix(): json.dumps(description, indent=2, sort_keys=True, default=str).encode(),
            MODEL_CARD_RELPATH.as_posix(): (note + card).encode(),
        }
        result = push_to_serving_root(source, serving_root, model_name, overrides=overrides)
    logger.info("rolled %s back to version %d as version %d (was serving %d)", model_name, to_version, result.version, served)
    if wait_for_rest_url:
        wait_until_available(wait_for_rest_url, model_name, result.version, wait_timeout_s, poll_interval_s)
        reference = description.get("reference_prediction")
        if reference and description.get("image_size"):
            check_served_prediction(wait_for_rest_url, model_name, result.version,
                                    reference_image(int(description["image_size"])), reference)
        else:
            logger.warning("version %d records no reference prediction: served answer not checked", to_version)
    if keep_versions:
        prune_versions(serving_root, model_name, keep_versions)
    return result
