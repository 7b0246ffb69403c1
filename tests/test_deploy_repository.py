"""Deploy, version repository: atomic versioned push (disk and gs://), prune, champion, rollback.

GCS is the real ``gcp-storage-emulator`` on loopback (fixtures from ``gcs_emulator.py``); TF Serving's
REST API is ``FakeTFServingREST`` (a test double in ``serving_doubles.py`` running the real SavedModel
with the ``latest`` version policy over a watched model directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from serving_doubles import PATCH, FakeTFServingREST, tiny_export  # noqa: E402

from mammo.components.deploy import repository  # noqa: E402
from mammo.components.deploy.export import METADATA_RELPATH, MODEL_CARD_RELPATH, reference_image  # noqa: E402
from mammo.components.deploy.repository import (  # noqa: E402
    PushResult,
    current_champion,
    list_versions,
    prune_versions,
    push_to_serving_root,
    rollback,
    version_number,
)
from mammo.components.imaging import encode_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METADATA = {"backbone": "tiny", "test_metrics": {"accuracy": 0.7, "macro_auc": 0.81, "macro_f1": 0.6}}
METADATA_B = {"backbone": "tiny-b", "test_metrics": {"accuracy": 0.75, "macro_auc": 0.86, "macro_f1": 0.65}}


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export(metadata=METADATA)


@pytest.fixture(scope="module")
def export_b() -> Path:
    """A second model (other weights): the challenger, or the wrong model on a server."""
    return tiny_export(seed=7, metadata=METADATA_B)


def _files(version_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(version_dir).as_posix(): p.read_bytes() for p in version_dir.rglob("*") if p.is_file()}


def _answer(model_dir: Path) -> np.ndarray:
    loaded = tf.saved_model.load(str(model_dir))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([encode_png(reference_image(PATCH))]))
    return out["probabilities"].numpy()


# -- version names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, number", [("1", 1), ("42", 42), (str(2**63 - 1), 2**63 - 1), ("0", None),
                                          ("007", None), ("+3", None), ("1e3", None), (" 4", None),
                                          (str(2**63), None), ("99999999999999999999", None), ("latest", None)])
def test_version_names_are_canonical_positive_integers_below_2_63(name: str, number: int | None) -> None:
    assert version_number(name) == number


# -- push to disk ----------------------------------------------------------------------------------


def test_push_when_root_empty_creates_version_1(export_dir: Path, tmp_path: Path) -> None:
    result = push_to_serving_root(export_dir, tmp_path / "serving", "mammo")
    version_dir = tmp_path / "serving" / "mammo" / "1"
    assert result == PushResult(version=1, path=str(version_dir.resolve()))
    assert _files(version_dir) == _files(export_dir)
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no staging dir left behind


def test_push_when_version_1_exists_creates_version_2(export_dir: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 2
    assert list_versions(tmp_path, "mammo") == {1: True, 2: True}


def test_push_goes_above_incomplete_versions_and_ignores_non_version_names(export_dir: Path, tmp_path: Path) -> None:
    model_root = tmp_path / "mammo"
    for name in ("3", ".tmp-9-deadbeef", "latest", "10abc", "0012"):
        (model_root / name).mkdir(parents=True)
    assert list_versions(tmp_path, "mammo") == {3: False}  # a version dir without saved_model.pb
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 4


def test_push_when_target_version_exists_raises_and_keeps_it(export_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "mammo" / "5"
    existing.mkdir(parents=True)
    (existing / "marker").write_text("served")
    with pytest.raises(FileExistsError, match="never overwritten"):
        push_to_serving_root(export_dir, tmp_path, "mammo", version=5)
    assert [p.name for p in existing.iterdir()] == ["marker"]
    assert sorted(p.name for p in existing.parent.iterdir()) == ["5"]


def test_push_copies_saved_model_pb_last_into_a_hidden_staging_dir(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    seen: dict[str, Any] = {}
    real_copy2 = shutil.copy2

    def spying_copy2(src: Any, dst: Any, **kwargs: Any) -> Any:
        dst = Path(dst)
        order.append(Path(src).relative_to(export_dir).as_posix())
        if dst.name == "saved_model.pb":
            seen["staging"] = dst.parent
            seen["target_exists"] = (tmp_path / "mammo" / "1").exists()
        return real_copy2(src, dst, **kwargs)

    monkeypatch.setattr(repository.shutil, "copy2", spying_copy2)
    push_to_serving_root(export_dir, tmp_path, "mammo")
    assert order[-1] == "saved_model.pb" and sorted(order) == sorted(_files(export_dir))
    assert seen["staging"].name.startswith(".") and seen["staging"].parent == tmp_path / "mammo"
    assert seen["target_exists"] is False  # the version appears only by the final rename


_CRASHING_PUSH = textwrap.dedent(
    """
    import os, shutil, sys
    from pathlib import Path
    from mammo.components.deploy import repository
    export, root, crash_at = sys.argv[1:4]
    real_copy2, real_rename = shutil.copy2, os.rename

    def die():
        os._exit(17)  # like a killed pod: no except / finally blocks run

    def copy2(src, dst, **kw):
        if Path(dst).name == crash_at:
            die()
        return real_copy2(src, dst, **kw)

    def rename(src, dst):
        if crash_at == "rename":
            die()
        return real_rename(src, dst)

    repository.shutil.copy2, repository.os.rename = copy2, rename
    if root.startswith("gs://"):
        from google.cloud.storage import Blob, Bucket
        real_upload, real_copy_blob = Blob.upload_from_filename, Bucket.copy_blob

        def upload(self, filename, *a, **kw):
            if crash_at == "upload:" + Path(filename).name:
                die()
            return real_upload(self, filename, *a, **kw)

        def copy_blob(self, blob, bucket, new_name, *a, **kw):
            if crash_at == "copy:" + new_name.rsplit("/", 1)[-1]:
                die()
            return real_copy_blob(self, blob, bucket, new_name, *a, **kw)

        Blob.upload_from_filename, Bucket.copy_blob = upload, copy_blob
    repository.push_to_serving_root(export, root, "mammo")
    """
)


def _crash_push(export_dir: Path, root: str, crash_at: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHING_PUSH, str(export_dir), root, crash_at],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 17, f"the push did not crash where planned:\n{proc.stderr[-2000:]}"


def _assert_not_loadable(model_dir: Path) -> None:
    with pytest.raises((OSError, IOError, ValueError, RuntimeError)):
        tf.saved_model.load(str(model_dir))


@pytest.mark.parametrize("crash_at", ["variables.data-00000-of-00001", "saved_model.pb", "rename"])
def test_push_crash_in_the_middle_leaves_no_loadable_partial_version(
    export_dir: Path, tmp_path: Path, crash_at: str
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")  # version 1 is being served
    _crash_push(export_dir, str(tmp_path), crash_at)
    model_root = tmp_path / "mammo"
    # TF Serving only looks at integer names: still just version 1, byte-identical
    assert sorted(p.name for p in model_root.iterdir() if p.name.isdigit()) == ["1"]
    assert _files(model_root / "1") == _files(export_dir)
    (leftover,) = [p for p in model_root.iterdir() if not p.name.isdigit()]
    assert leftover.name.startswith(".tmp-2-")
    if crash_at != "rename":
        _assert_not_loadable(leftover)
    assert current_champion(tmp_path, "mammo")["version"] == 1
    # the next push carries on, and pruning clears the crashed push's staging dir
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 2
    prune_versions(tmp_path, "mammo", keep=5, stale_staging_s=0)
    assert sorted(p.name for p in model_root.iterdir()) == ["1", "2"]


def test_push_when_export_has_no_saved_model_pb_raises(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        push_to_serving_root(tmp_path / "export", tmp_path / "serving", "mammo")


def test_push_to_unsupported_uri_scheme_raises(export_dir: Path) -> None:
    with pytest.raises(ValueError, match="only local paths and gs:// URIs"):
        push_to_serving_root(export_dir, "s3://bucket/models", "mammo")


# -- push to gs:// (emulator) ----------------------------------------------------------------------


def test_push_to_gcs_publishes_saved_model_pb_last_and_counts_up(
    export_dir: Path, gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage import Bucket

    copied: list[str] = []
    real_copy_blob = Bucket.copy_blob

    def spying_copy_blob(self: Any, blob: Any, bucket: Any, new_name: str, *args: Any, **kwargs: Any) -> Any:
        copied.append(new_name)
        assert kwargs.get("if_generation_match") == 0  # "create only" on real GCS
        return real_copy_blob(self, blob, bucket, new_name, *args, **kwargs)

    monkeypatch.setattr(Bucket, "copy_blob", spying_copy_blob)
    root = f"gs://{gcs_bucket}/models"
    first = push_to_serving_root(export_dir, root, "mammo")
    assert first == PushResult(version=1, path=f"gs://{gcs_bucket}/models/mammo/1")
    assert copied[-1] == "models/mammo/1/saved_model.pb"
    names = sorted(b.name for b in gcs_client.list_blobs(gcs_bucket))
    assert names == sorted(f"models/mammo/1/{rel}" for rel in _files(export_dir))  # staging objects deleted
    assert push_to_serving_root(export_dir, root, "mammo").version == 2
    assert current_champion(root, "mammo")["test_metrics"]["macro_auc"] == 0.81
    with pytest.raises(FileExistsError, match="never overwritten"):
        push_to_serving_root(export_dir, root, "mammo", version=2)


@pytest.mark.parametrize("crash_at", ["upload:saved_model.pb", "copy:variables.index", "copy:saved_model.pb"])
def test_push_to_gcs_crash_in_the_middle_leaves_no_loadable_partial_version(
    export_dir: Path, gcs_client: Any, gcs_bucket: str, tmp_path: Path, crash_at: str
) -> None:
    root = f"gs://{gcs_bucket}/models"
    _crash_push(export_dir, root, crash_at)
    versions = list_versions(root, "mammo")
    if crash_at.startswith("upload:"):
        assert versions == {}  # only the dot-named staging prefix holds objects
    else:
        assert versions == {1: False}  # a version prefix without saved_model.pb
        for blob in gcs_client.list_blobs(gcs_bucket, prefix="models/mammo/1/"):
            local = tmp_path / "partial" / blob.name[len("models/mammo/1/"):]
            local.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(local))
        _assert_not_loadable(tmp_path / "partial")
    assert current_champion(root, "mammo") is None
    second = push_to_serving_root(export_dir, root, "mammo")
    assert second.version == (1 if crash_at.startswith("upload:") else 2)
    prune_versions(root, "mammo", keep=5, stale_staging_s=0)
    assert list_versions(root, "mammo") == {second.version: True}
    assert all(b.name.startswith(f"models/mammo/{second.version}/") for b in gcs_client.list_blobs(gcs_bucket))


# -- prune and champion ----------------------------------------------------------------------------


def test_prune_keeps_the_last_k_complete_versions(export_dir: Path, tmp_path: Path) -> None:
    for _ in range(4):
        push_to_serving_root(export_dir, tmp_path, "mammo")
    assert prune_versions(tmp_path, "mammo", keep=2) == [1, 2]
    assert list_versions(tmp_path, "mammo") == {3: True, 4: True}
    assert prune_versions(tmp_path, "mammo", keep=0) == []  # 0 keeps everything
    assert sorted(p.name for p in (tmp_path / "mammo").iterdir()) == ["3", "4"]


def test_prune_removes_incomplete_versions_below_the_newest_complete_one(export_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mammo" / "1").mkdir(parents=True)  # a partial copy by some other tool
    push_to_serving_root(export_dir, tmp_path, "mammo")
    (tmp_path / "mammo" / "3").mkdir()  # maybe a push in progress: newer, left alone
    assert prune_versions(tmp_path, "mammo", keep=5) == [1]
    assert list_versions(tmp_path, "mammo") == {2: True, 3: False}


def test_champion_when_nothing_served_is_none(tmp_path: Path) -> None:
    assert current_champion(tmp_path, "mammo") is None
    (tmp_path / "mammo" / ".tmp-1-abc").mkdir(parents=True)
    (tmp_path / "mammo" / "2").mkdir()  # incomplete: not served
    assert current_champion(tmp_path, "mammo") is None


def test_champion_is_the_record_of_the_highest_complete_version(export_dir: Path, export_b: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    push_to_serving_root(export_b, tmp_path, "mammo")
    (tmp_path / "mammo" / "3").mkdir()
    champion = current_champion(tmp_path, "mammo")
    assert champion["backbone"] == "tiny-b" and champion["test_metrics"]["macro_auc"] == 0.86
    assert champion["version"] == 2 and champion["path"] == str((tmp_path / "mammo" / "2").resolve())


def test_champion_without_a_record_says_why(tmp_path: Path) -> None:
    (tmp_path / "mammo" / "7").mkdir(parents=True)
    (tmp_path / "mammo" / "7" / "saved_model.pb").write_bytes(b"")
    champion = current_champion(tmp_path, "mammo")
    assert champion["version"] == 7 and champion["path"] == str((tmp_path / "mammo" / "7").resolve())
    assert "has no assets.extra/mammo_model.json" in champion["record_error"]
    assert "test_metrics" not in champion


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_serves_the_previous_model_again_as_a_new_highest_version(
    export_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")  # version 1: model A
    push_to_serving_root(export_b, tmp_path, "mammo")  # version 2: model B, the one that went wrong
    assert rollback(tmp_path, "mammo").version == 3
    v1, v3 = _files(tmp_path / "mammo" / "1"), _files(tmp_path / "mammo" / "3")
    unchanged = {rel for rel in v1 if rel not in (METADATA_RELPATH.as_posix(), MODEL_CARD_RELPATH.as_posix())}
    assert {rel: v3[rel] for rel in unchanged} == {rel: v1[rel] for rel in unchanged}  # the model itself
    champion = current_champion(tmp_path, "mammo")
    assert champion["version"] == 3 and champion["backbone"] == "tiny"  # the gate now compares against A
    assert champion["rolled_back_from"] == 1 and champion["replaced_version"] == 2
    assert (tmp_path / "mammo" / "3" / MODEL_CARD_RELPATH).read_text().startswith("> **Rollback**: ")
    np.testing.assert_array_equal(_answer(tmp_path / "mammo" / "3"), _answer(tmp_path / "mammo" / "1"))


def test_rollback_to_a_named_version_waits_and_checks_the_served_answer(
    export_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    for export in (export_dir, export_b, export_b):
        push_to_serving_root(export, tmp_path, "mammo")
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo") as server:
        result = rollback(tmp_path, "mammo", to_version=1, wait_for_rest_url=server.url, poll_interval_s=0.01,
                          keep_versions=2)
        assert server.requests == [("GET", "/v1/models/mammo/versions/4"), ("POST", "/v1/models/mammo/versions/4:predict")]
    assert result.version == 4 and current_champion(tmp_path, "mammo")["rolled_back_from"] == 1
    assert list_versions(tmp_path, "mammo") == {3: True, 4: True}


def test_rollback_without_an_earlier_version_raises(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no complete version"):
        rollback(tmp_path, "mammo")
    push_to_serving_root(export_dir, tmp_path, "mammo")
    with pytest.raises(ValueError, match="nothing earlier"):
        rollback(tmp_path, "mammo")
    with pytest.raises(ValueError, match="version 9 .* is not a complete version"):
        rollback(tmp_path, "mammo", to_version=9)


def test_rollback_on_gcs_copies_the_version_back(export_dir: Path, export_b: Path, gcs_client: Any, gcs_bucket: str) -> None:
    root = f"gs://{gcs_bucket}/models"
    push_to_serving_root(export_dir, root, "mammo")
    push_to_serving_root(export_b, root, "mammo")
    assert rollback(root, "mammo", keep_versions=2).version == 3
    assert list_versions(root, "mammo") == {2: True, 3: True}
    bucket = gcs_client.bucket(gcs_bucket)
    assert bucket.blob("models/mammo/3/variables/variables.data-00000-of-00001").download_as_bytes() == \
        (export_dir / "variables" / "variables.data-00000-of-00001").read_bytes()
    assert current_champion(root, "mammo")["backbone"] == "tiny"


def test_cli_rollback_prints_the_new_version(export_dir: Path, export_b: Path, tmp_path: Path, capsys: Any) -> None:
    from mammo.pipelines.cli import main

    push_to_serving_root(export_dir, tmp_path, "mammo")
    push_to_serving_root(export_b, tmp_path, "mammo")
    capsys.readouterr()
    assert main(["rollback", "--serving-root", str(tmp_path), "--to-version", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 3 and printed["rolled_back_from"] == 1
