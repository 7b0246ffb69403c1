"""Hostile or careless inputs to deploy, the serving root and rollback (each break found by hand has a test).

What a damaged serving root gets:

| input | outcome |
|---|---|
| a regular file named like the next version | ignored; pushes go above it |
| a folder ``99999999999999999999`` (not an int64), ``007`` | ignored: never a version, never the champion |
| a champion whose ``mammo_model.json`` is not JSON | "champion without a record" (``record_error``), no crash |
| rollback to a version that does not load / answers differently | refused before anything is published |
| two pushes racing for the same number | the loser takes the next number; no raw OSError |
| an export killed mid-way (kill -9) | its temporary folder is removed by the next export |
| a PNG declaring 16000 x 16000 pixels sent to ``serving_default`` | INVALID_ARGUMENT naming the pixel budget, never decoded |
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_doubles import FakeTFServingGRPC, FakeTFServingREST, tiny_export  # noqa: E402

from mammo.components.deploy import repository  # noqa: E402
from mammo.components.deploy.export import METADATA_RELPATH, WORKSPACE_PREFIX, export_workspace  # noqa: E402
from mammo.components.deploy.repository import (  # noqa: E402
    VersionTaken,
    current_champion,
    list_versions,
    prune_versions,
    push_to_serving_root,
    rollback,
)
from mammo.components.deploy.serving_client import GrpcClient, RestClient, ServingError  # noqa: E402
from mammo.pipelines.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export(metadata={"backbone": "tiny", "test_metrics": {"macro_auc": 0.8}})


@pytest.fixture(scope="module")
def budget_export() -> Path:
    return tiny_export(max_image_pixels=1_000_000)


# -- the serving root ------------------------------------------------------------------------------


def test_a_regular_file_named_like_the_next_version_does_not_block_pushes(export_dir: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    (tmp_path / "mammo" / "2").write_text("not a version")
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 3
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 4
    assert list_versions(tmp_path, "mammo") == {1: True, 3: True, 4: True}
    assert (tmp_path / "mammo" / "2").read_text() == "not a version"  # left alone
    assert prune_versions(tmp_path, "mammo", keep=1) == [1, 3]
    assert (tmp_path / "mammo" / "2").is_file()


def test_a_folder_named_beyond_int64_is_ignored(export_dir: Path, tmp_path: Path) -> None:
    huge = tmp_path / "mammo" / "99999999999999999999"
    huge.mkdir(parents=True)
    (huge / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "mammo" / "007").mkdir()
    assert list_versions(tmp_path, "mammo") == {}
    assert current_champion(tmp_path, "mammo") is None
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 1
    assert current_champion(tmp_path, "mammo")["version"] == 1


def test_a_champion_whose_record_is_not_json_is_a_champion_without_a_record(
    export_dir: Path, tmp_path: Path, caplog: Any
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    (tmp_path / "mammo" / "1" / METADATA_RELPATH).write_text("{not json")
    champion = current_champion(tmp_path, "mammo")
    assert champion["version"] == 1 and "test_metrics" not in champion
    assert "is not valid JSON" in champion["record_error"]
    assert "champion without a record" in caplog.text
    (tmp_path / "mammo" / "1" / METADATA_RELPATH).write_text("[1, 2]")  # JSON, but not an object
    assert "not a JSON object" in current_champion(tmp_path, "mammo")["record_error"]
    # the next push and a rollback to the damaged version still work (the copy gets a fresh record)
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 2
    assert rollback(tmp_path, "mammo", to_version=1).version == 3
    assert current_champion(tmp_path, "mammo")["rolled_back_from"] == 1


@pytest.mark.parametrize("damage", ["saved_model.pb", "variables"])
def test_rollback_refuses_a_source_version_that_does_not_load(
    export_dir: Path, tmp_path: Path, damage: str, capsys: Any
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    push_to_serving_root(export_dir, tmp_path, "mammo")
    source = tmp_path / "mammo" / "1"
    if damage == "saved_model.pb":
        (source / "saved_model.pb").write_bytes(b"\x08garbage" * 10)
    else:  # same size, other bytes: loads, but answers the reference image differently (or fails to restore)
        data = source / "variables" / "variables.data-00000-of-00001"
        data.write_bytes(np.random.default_rng(0).integers(0, 256, data.stat().st_size, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="refusing to roll back to version 1"):
        rollback(tmp_path, "mammo")
    assert list_versions(tmp_path, "mammo") == {1: True, 2: True}  # nothing published
    capsys.readouterr()
    assert main(["rollback", "--serving-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "refusing to roll back" in err and "Traceback" not in err


def test_a_push_losing_a_race_takes_the_next_number(export_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    real_rename = os.rename
    raced = []

    def rename_after_a_rival(src: Any, dst: Any) -> None:
        if not raced and Path(dst).name == "2":  # a rival push publishes version 2 just before us
            raced.append(dst)
            (Path(dst) / "saved_model.pb").parent.mkdir()
            (Path(dst) / "saved_model.pb").write_bytes(b"rival")
        return real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", rename_after_a_rival)
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 3
    assert (tmp_path / "mammo" / "2" / "saved_model.pb").read_bytes() == b"rival"  # the rival's, untouched
    with pytest.raises(VersionTaken, match="created by another push"):  # an explicit version is not renumbered
        _push_explicit_after_rival(export_dir, tmp_path, real_rename, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "mammo").iterdir()) == ["1", "2", "3", "4"]


def _push_explicit_after_rival(export_dir: Path, root: Path, real_rename: Any, monkeypatch: Any) -> None:
    def rival(src: Any, dst: Any) -> None:
        Path(dst).mkdir()
        (Path(dst) / "saved_model.pb").write_bytes(b"rival")
        return real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", rival)
    push_to_serving_root(export_dir, root, "mammo", version=4)


_PUSHER = textwrap.dedent(
    """
    import sys
    from mammo.components.deploy.repository import push_to_serving_root
    export, root = sys.argv[1:3]
    print(" ".join(str(push_to_serving_root(export, root, "mammo").version) for _ in range(4)))
    """
)


def test_concurrent_pushes_get_distinct_versions_without_tracebacks(export_dir: Path, tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _PUSHER, str(export_dir), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    versions = [int(v) for out, _ in outs for v in out.split()]
    assert sorted(versions) == list(range(1, 13))
    assert list_versions(tmp_path, "mammo") == {v: True for v in range(1, 13)}
    assert not [p for p in (tmp_path / "mammo").iterdir() if p.name.startswith(".")]


# -- the export ------------------------------------------------------------------------------------


def test_an_export_killed_mid_way_leaves_a_folder_the_next_export_removes(tmp_path: Path) -> None:
    code = ("import os, sys; from mammo.components.deploy.export import export_workspace\n"
            "with export_workspace(sys.argv[1]) as w:\n"
            "    (w / 'export' / 'variables').mkdir(parents=True); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert [p.name.startswith(WORKSPACE_PREFIX) for p in tmp_path.iterdir()] == [True]
    with export_workspace(tmp_path) as work:
        assert list(tmp_path.iterdir()) == [work]
    assert list(tmp_path.iterdir()) == []


# -- the serving signature -------------------------------------------------------------------------


def _bomb_png(side: int = 16000) -> bytes:
    """A real PNG of ``side`` x ``side`` black pixels (deflate makes it ~250 KB): decoding it costs 256 MB+."""
    import zlib

    from mammo.components.imaging import encode_png

    header = encode_png(np.zeros((1, 1), np.uint8))[:8]
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    return header + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", body) + \
        chunk(b"IEND", b"")


def test_a_png_declaring_16000_squared_pixels_is_refused_inside_the_graph_over_rest_and_grpc(
    budget_export: Path,
) -> None:
    import resource

    bomb = _bomb_png()
    assert len(bomb) < 300_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with FakeTFServingREST("mammo", budget_export) as rest:
        with pytest.raises(ServingError, match=r"HTTP 400: InvalidArgumentError: image_bytes: image of 16000 x 16000 pixels .* pixel budget of 1000000 pixels \(deploy.max_image_pixels\)$"):
            RestClient(rest.url, "mammo").send(
                {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(bomb).decode()}]}, 1)
    with FakeTFServingGRPC("mammo", budget_export) as server, GrpcClient(server.host_port, "mammo") as client:
        request = _grpc_bytes_request(bomb)
        with pytest.raises(ServingError, match=r"INVALID_ARGUMENT: .*image of 16000 x 16000 pixels .*pixel budget of 1000000"):
            client.send(request)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak RSS grew by {grown_mb:.0f} MB: the image was decoded"


def _grpc_bytes_request(png: bytes) -> Any:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mammo"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png], dtype=tf.string, shape=[1]))
    return request
