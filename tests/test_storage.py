"""``storage``'s whole-file helpers, the same calls on a local folder and on GCS.

GCS is the real ``gcp-storage-emulator`` on loopback with the real ``google-cloud-storage`` client
(fixtures from ``gcs_emulator.py``); each test runs once per kind of root.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from mammo.components import storage


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/{uuid.uuid4().hex[:8]}"


def test_upload_then_download_round_trips_and_size_is_known(root: str, tmp_path: Path) -> None:
    src = tmp_path / "weights.h5"
    src.write_bytes(b"\x89HDF" + bytes(range(256)) * 40)
    uri = storage.join(root, "w", "weights.h5")
    storage.upload_file(src, uri)
    assert storage.exists(uri) and storage.size(uri) == src.stat().st_size
    got = storage.download_file(uri, tmp_path / "down" / "w.h5")
    assert got.read_bytes() == src.read_bytes()
    assert not (tmp_path / "down" / "w.h5.partial").exists()


def test_missing_object_is_a_storage_error_naming_it_and_leaves_no_partial_file(root: str, tmp_path: Path) -> None:
    uri = storage.join(root, "nope.h5")
    with pytest.raises(storage.StorageError, match="nope.h5"):
        storage.size(uri)
    with pytest.raises((storage.StorageError, FileNotFoundError), match="nope.h5"):
        storage.download_file(uri, tmp_path / "x.h5")
    assert list(tmp_path.glob("x.h5*")) == []


def test_create_only_copy_refuses_an_existing_target_and_keeps_it(root: str) -> None:
    a, b = storage.join(root, "a.txt"), storage.join(root, "v", "b.txt")
    storage.write_text(a, "new")
    storage.copy(a, b, if_absent=True)
    assert storage.read_text(b) == "new"
    storage.write_text(a, "newer")
    with pytest.raises(storage.AlreadyExists, match="b.txt"):
        storage.copy(a, b, if_absent=True)
    assert storage.read_text(b) == "new"
    storage.copy(a, b)  # without the precondition: replaced
    assert storage.read_text(b) == "newer"


def test_delete_says_whether_there_was_something(root: str) -> None:
    uri = storage.join(root, "x.bin")
    storage.write_bytes(uri, b"1")
    assert storage.delete(uri) is True
    assert not storage.exists(uri)
    assert storage.delete(uri) is False
    with pytest.raises(storage.StorageError, match="x.bin"):
        storage.delete(uri, missing_ok=False)


def test_list_children_gives_one_level_of_folders_and_files(root: str) -> None:
    assert storage.list_children(root) == ([], [])
    for rel in ("1/saved_model.pb", "1/variables/v.index", "2/x", ".tmp-3-ab/y", "notes.txt"):
        storage.write_text(storage.join(root, rel), rel)
    assert storage.list_children(root) == ([".tmp-3-ab", "1", "2"], ["notes.txt"])


def test_listing_carries_modification_time_and_a_version_that_changes_on_rewrite(root: str) -> None:
    uri = storage.join(root, "d", "f.csv")
    storage.write_text(uri, "a,b")
    (first,) = storage.list_files(storage.join(root, "d"))
    assert abs(first.updated - time.time()) < 300 and first.version
    time.sleep(0.01)  # a local mtime_ns must be able to move
    storage.write_text(uri, "a,b")
    (second,) = storage.list_files(storage.join(root, "d"))
    assert second.version != first.version
