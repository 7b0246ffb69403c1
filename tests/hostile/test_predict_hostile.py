"""Hostile or careless inputs to ``mammo predict``: every file gets an answer, bad ones an ``error``.

| input | outcome |
|---|---|
| one unreadable / truncated / text file among good ones | the good ones get their result; the bad one ``{"file", "error"}``; exit code 1; no traceback |
| a PNG declaring 16000 x 16000 pixels (a few hundred KB) | ``error`` naming the pixel budget, read from the header, never decoded |
| a missing file, a directory | ``error`` with the reason |
| ``gs://`` object in a missing bucket / an unreachable endpoint | ``error``, one line, within the read deadline |
| a server that refuses one image of a batch | that file's ``error``; the others still answered |
"""

from __future__ import annotations

import json
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_doubles import FakeTFServingREST, closed_port_url, random_patches, tiny_export  # noqa: E402

from mammo.components import storage  # noqa: E402
from mammo.components.deploy.predict import predict_files, predict_local  # noqa: E402
from mammo.components.deploy.serving_client import LocalModel, RestClient  # noqa: E402
from mammo.components.imaging import encode_png  # noqa: E402
from mammo.pipelines.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_export()


def _png_declaring(width: int, height: int) -> bytes:
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat_body = zlib.compress(b"\0" * 1000)
    idat = b"IDAT" + idat_body
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat_body)) + idat + struct.pack(">I", zlib.crc32(idat)))


@pytest.fixture
def mixed(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    good.write_bytes(encode_png(random_patches(1)[0, :, :, 0]))
    good2 = tmp_path / "good2.png"
    good2.write_bytes(encode_png(random_patches(1, seed=3)[0, :, :, 0]))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM at all")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(16000, 16000))
    return {"good": good, "truncated": truncated, "text": text, "bomb": bomb, "missing": tmp_path / "missing.png",
            "folder": tmp_path, "good2": good2}


def test_one_bad_file_among_good_ones_costs_only_its_own_answer(model_dir: Path, mixed: dict[str, Path]) -> None:
    paths = [mixed[k] for k in ("good", "truncated", "text", "bomb", "missing", "folder", "good2")]
    answers = predict_local(model_dir, paths, max_pixels=50_000_000)
    assert [a["file"] for a in answers] == [str(p) for p in paths]
    good, truncated, text, bomb, missing, folder, good2 = answers
    assert set(good) == {"file", "class_name", "class_index", "probabilities"} and "error" not in good2
    for bad in (truncated, text, bomb, missing, folder):
        assert set(bad) == {"file", "error"} and "\n" not in bad["error"] and bad["error"]
    assert ("16000" in bomb["error"] or "256000000" in bomb["error"]) and "budget" in bomb["error"]
    assert "missing.png" in missing["error"] or "No such file" in missing["error"]


def test_the_pixel_budget_is_read_from_the_header_before_decoding(model_dir: Path, mixed: dict[str, Path]) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    (answer,) = predict_local(model_dir, [mixed["bomb"]], max_pixels=50_000_000)
    assert "budget" in answer["error"] and time.perf_counter() - started < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # 256 MB if decoded


def test_cli_predict_answers_every_file_exits_1_and_prints_no_traceback(
    model_dir: Path, mixed: dict[str, Path], capsys: Any
) -> None:
    paths = [str(mixed["good"]), str(mixed["truncated"]), str(mixed["bomb"]), str(mixed["good2"])]
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), *paths]) == 1
    captured = capsys.readouterr()
    answers = json.loads(captured.out)
    assert [("error" in a) for a in answers] == [False, True, True, False]
    assert "Traceback" not in captured.err and "2 of 4 file(s) failed" in captured.err
    assert main(["predict", "--model", str(model_dir), str(mixed["good"])]) == 0


def test_a_missing_model_is_one_line_and_exit_1(tmp_path: Path, mixed: dict[str, Path], capsys: Any) -> None:
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "nothing"), str(mixed["good"])]) == 1
    err = capsys.readouterr().err
    assert "not a loadable SavedModel" in err and "Traceback" not in err


def test_gcs_errors_are_one_line_and_bounded(model_dir: Path, gcs_server: Any, monkeypatch: Any) -> None:
    backend = LocalModel(model_dir)
    (missing,) = predict_files(backend, ["gs://no-such-bucket/a.png"])
    assert "gs://no-such-bucket/a.png" in missing["error"] and "\n" not in missing["error"]
    # an endpoint nobody answers: retried only within the read deadline, then one line
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed_port_url())
    monkeypatch.setattr(storage, "READ_RETRY", storage.RETRY.with_timeout(2.0))
    started = time.perf_counter()
    (unreachable,) = predict_files(backend, ["gs://bucket/b.png"])
    assert time.perf_counter() - started < 20
    assert "gs://bucket/b.png" in unreachable["error"] and "\n" not in unreachable["error"]


def test_a_server_refusing_one_image_of_a_batch_answers_the_others(model_dir: Path, tmp_path: Path) -> None:
    small_budget = tiny_export(max_image_pixels=40 * 40)
    paths = []
    for i, side in enumerate((16, 60, 20)):  # the 60 x 60 image is over the server's budget
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode_png(np.full((side, side), 100, np.uint8)))
        paths.append(path)
    with FakeTFServingREST("mammo", small_budget) as server:
        answers = predict_files(RestClient(server.url, "mammo"), paths)
        assert len(server.bodies) == 4  # one batch refused, then one request per file
    assert ["error" in a for a in answers] == [False, True, False]
    assert "image of 60 x 60 pixels" in answers[1]["error"] and "pixel budget of 1600" in answers[1]["error"]
