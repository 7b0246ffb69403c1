"""Hostile and careless inputs to ingest: each is built here and its outcome asserted.

Bounded memory on a Deflated DICOM bomb, nothing read outside the root, no hang on a FIFO, every
file of the normals folder accounted, readable CSV errors with every input in the report, and a
bounded one-line error for an unreachable bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from ingest_inputs import deflated_bomb

from mammo.components import contracts, storage
from mammo.components.config import Config
from mammo.components.ingest.logic import CSV_FILES, IngestError, run
from mammo.components.synth.logic import synthesize

LENIENT = Config().with_overrides({"ingest.max_reject_fraction": 1.0})
MASS_TRAIN = "mass_case_description_train_set.csv"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny synthetic download: 2 rows per abnormal class, 96x64 images."""
    out = tmp_path_factory.mktemp("hostile_ingest")
    synthesize(out, per_class=2, seed=3, image_shape=(96, 64), progress=False)
    return out


@pytest.fixture
def data(tiny, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny, dst)
    return dst


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""
    def _expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    return (pd.read_parquet(out / contracts.CASES), pd.read_parquet(out / contracts.REJECTS),
            pd.read_parquet(out / contracts.SKIPPED), json.loads((out / contracts.REPORT_JSON).read_text()))


def _header_only(data: Path) -> None:
    """Keep the CSVs' header lines only (no CBIS rows: the test is about the normals)."""
    for name in CSV_FILES:
        path = data / "cbis" / name
        path.write_text(path.read_text().splitlines()[0] + "\n")


# -- memory: a 1 MB Deflated DICOM that inflates to 1 GiB -----------------------------------------

_CHILD = textwrap.dedent("""
    import json, resource, sys
    from mammo.components.config import Config
    from mammo.components.ingest.logic import run
    report = run(sys.argv[1], sys.argv[2], sys.argv[3], Config())
    # VmHWM: this process's own peak RSS. getrusage's ru_maxrss is not used: Linux carries the parent's
    # high-water mark over exec, so a child of a large pytest process would report the parent's peak.
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": hwm / 1024, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "ingested": report.totals.ingested}))
""")


def test_deflated_dicom_bomb_keeps_ingest_under_500_mb(data, tmp_path):
    _header_only(data)
    normals = tmp_path / "normals"
    normals.mkdir()
    bomb = deflated_bomb(normals / "N_00001_LEFT_CC.dcm")
    assert bomb.stat().st_size < 2 * 1024 * 1024
    done = subprocess.run([sys.executable, "-c", _CHILD, str(data / "cbis"), str(normals), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ingested"] == 1
    assert result["peak_mb"] < 500, result
    cases = pd.read_parquet(tmp_path / "out" / contracts.CASES)
    assert cases[["image_rows", "image_cols", "bits_stored"]].values.tolist() == [[32768, 16384, 12]]


def test_deflated_dicom_on_gcs_is_read_by_range_not_downloaded(gcs_client, gcs_bucket, flaky_gcs, tmp_path):
    from gcs_emulator import upload_dir

    from mammo.components.headers import HEADER_BLOCK, read_header

    folder = tmp_path / "bomb"
    folder.mkdir()
    bomb = deflated_bomb(folder / "x.dcm", rows=8192, cols=8192)  # 128 MiB inflated, small to upload
    (entry,) = storage.list_files(upload_dir(gcs_client, folder, gcs_bucket, "b"))
    header = read_header(entry.uri, size=entry.size)
    assert (header.rows, header.cols) == (8192, 8192)
    fetched = sum(n for _, n in flaky_gcs.downloads)
    assert 0 < fetched <= 2 * HEADER_BLOCK < bomb.stat().st_size


# -- nothing outside the root, no hang -------------------------------------------------------------


def _first_image_of_row(data: Path, csv_name: str) -> Path:
    """The full-image file the first row of ``csv_name`` resolves to in the synthetic NBIA tree."""
    from mammo.components.ingest.tables import read_case_csv

    folder = read_case_csv(data / "cbis" / csv_name).iloc[0]["image file path"].split("/")[0]
    (hit,) = [p for p in (data / "cbis").rglob("*.dcm") if f"/{folder}/" in str(p)]
    return hit


def test_symlink_out_of_the_root_is_rejected_not_followed(data, tmp_path):
    outside = tmp_path / "outside.dcm"
    target = _first_image_of_row(data, MASS_TRAIN)
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    report = run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    cases, rejects, _, saved = _tables(tmp_path / "out")
    hit = rejects[(rejects["source_file"] == MASS_TRAIN) & (rejects["source_row"] == 1)]
    assert hit["reason"].tolist() == ["path_outside_root"]
    assert not cases["image_uri"].str.contains("outside").any()
    assert saved["refused_files"] == {"path_outside_root": 1}
    assert report.counts[MASS_TRAIN].rejected == 1


def test_case_csv_symlinked_out_of_the_root_is_refused(data, tmp_path):
    outside = tmp_path / MASS_TRAIN
    shutil.move(data / "cbis" / MASS_TRAIN, outside)
    (data / "cbis" / MASS_TRAIN).symlink_to(outside)
    with pytest.raises(IngestError, match=f"{MASS_TRAIN}: symbolic link to a path outside the data root"):
        run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    _, rejects, _, saved = _tables(tmp_path / "out")
    assert rejects[rejects["source_file"] == MASS_TRAIN]["reason"].tolist() == ["path_outside_root"]
    assert set(saved["counts"]) == {*CSV_FILES, contracts.NORMALS_MANIFEST}


def test_named_pipe_where_a_dicom_is_expected_is_rejected_without_hanging(data, tmp_path):
    target = _first_image_of_row(data, MASS_TRAIN)
    target.unlink()
    os.mkfifo(target)
    with deadline(60):
        run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    _, rejects, _, saved = _tables(tmp_path / "out")
    hit = rejects[(rejects["source_file"] == MASS_TRAIN) & (rejects["source_row"] == 1)]
    assert hit["reason"].tolist() == ["not_a_regular_file"]
    assert "FIFO" in hit["message"].iloc[0]
    assert saved["refused_files"] == {"not_a_regular_file": 1}


# -- every file of the normals folder accounted ----------------------------------------------------


def test_every_file_in_the_normals_folder_is_a_case_a_reject_or_skipped(data, tmp_path):
    _header_only(data)
    normals = tmp_path / "normals"
    (normals / "case1").mkdir(parents=True)
    good = sorted((data / "normals").rglob("*_CC.dcm"))[:2]
    for p in good:
        shutil.copy(p, normals / "case1" / p.name)
    (normals / "case1" / "N_00090_LEFT_CC.png").write_bytes(b"")  # 0 bytes
    (normals / "case1" / "N_00091_LEFT_CC.png").write_text("this is not an image\n")
    (normals / "case1" / "N_00092_LEFT_CC.png ").write_bytes(good[0].read_bytes())  # trailing space
    (normals / "case1" / "N_00093_LEFT_CC.dcm.bak").write_bytes(good[0].read_bytes())
    (normals / "case1" / "README").write_text("notes")
    (normals / "case1" / ".DS_Store").write_bytes(b"\0")
    os.mkfifo(normals / "case1" / "N_00094_LEFT_CC.dcm")
    (tmp_path / "secret.dcm").write_bytes(good[0].read_bytes())
    (normals / "case1" / "N_00095_LEFT_CC.dcm").symlink_to(tmp_path / "secret.dcm")
    n_files = sum(1 for _ in (normals / "case1").iterdir())
    with deadline(60):
        report = run(data / "cbis", normals, tmp_path / "out", LENIENT)
    cases, rejects, skipped, saved = _tables(tmp_path / "out")
    assert len(cases) + len(rejects) + len(skipped) == n_files == 10
    assert sorted(Path(u).name for u in cases["image_uri"]) == [p.name for p in good]
    assert dict(zip(rejects["message"].str.extract(r"(N_\d+)")[0], rejects["reason"])) == {
        "N_00090": "empty_file", "N_00091": "not_an_image", "N_00094": "not_a_regular_file",
        "N_00095": "path_outside_root"}
    assert dict(zip(skipped["path"].str.rpartition("/")[2], skipped["reason"])) == {
        "N_00092_LEFT_CC.png ": "whitespace_in_name", "N_00093_LEFT_CC.dcm.bak": "unknown_extension",
        "README": "unknown_extension", ".DS_Store": "hidden_file"}
    assert saved["skipped_reasons"] == {"whitespace_in_name": 1, "unknown_extension": 2, "hidden_file": 1}
    assert saved["counts"]["normals/"] == {"read": 6, "ingested": 2, "rejected": 4, "error": ""}
    assert report.totals.read == 6


def test_with_a_manifest_every_file_it_does_not_name_is_skipped_and_counted(data, tmp_path):
    normals = data / "normals"
    listed = sum(1 for p in normals.rglob("*") if p.is_file()) - 1  # all but the manifest are named in it
    (normals / "notes.txt").write_text("x")
    stray = next(normals.rglob("*_CC.dcm"))
    shutil.copy(stray, stray.with_name("N_77777_LEFT_CC.dcm"))
    run(data / "cbis", normals, tmp_path / "out", LENIENT)
    cases, rejects, skipped, saved = _tables(tmp_path / "out")
    assert dict(zip(skipped["path"].str.rpartition("/")[2], skipped["reason"])) == {
        contracts.NORMALS_MANIFEST: "metadata_file", "notes.txt": "unknown_extension",
        "N_77777_LEFT_CC.dcm": "not_in_manifest"}
    assert (cases["source"] == "ddsm-normal").sum() == listed
    assert saved["skipped_reasons"] == {"metadata_file": 1, "unknown_extension": 1, "not_in_manifest": 1}


# -- CSV failures: file, physical line, what is wrong; every input in the report ---------------------


def _break_csv(path: Path, how: str) -> str:
    """Damage a case-description CSV; returns what the error must say."""
    lines = path.read_bytes().split(b"\n")
    if how == "not_utf8":
        lines[2] = lines[2].replace(b"MASS", b"M\xffSS", 1).replace(b"CALC", b"C\xffLC", 1) + b"\xff"
        path.write_bytes(b"\n".join(lines))
        return rf"{path.name} line 3: not UTF-8 text \(byte 0xff"
    if how == "unclosed_quote":
        text = path.read_bytes().rstrip(b"\n") + b"\n"
        path.write_bytes(text + b'P_9,"unclosed\n')
        line = text.count(b"\n") + 1
        return rf"{path.name} line {line}: a quoted field is never closed"
    if how == "empty":
        path.write_bytes(b"")
        return rf"{path.name}: empty file \(no header line\)"
    if how == "missing_column":
        df = pd.read_csv(path, dtype=str)
        df.drop(columns=["pathology"]).to_csv(path, index=False)
        return rf"{path.name}: missing column\(s\) \['pathology'\]; expected columns \[.*'pathology'"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["not_utf8", "unclosed_quote", "empty", "missing_column"])
def test_an_unusable_csv_is_one_readable_error_and_every_table_is_still_written(data, tmp_path, how):
    rows = len(pd.read_csv(data / "cbis" / MASS_TRAIN))
    expected = _break_csv(data / "cbis" / MASS_TRAIN, how)
    with pytest.raises(IngestError, match=expected):
        run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    cases, rejects, _, saved = _tables(tmp_path / "out")
    mine = rejects[rejects["source_file"] == MASS_TRAIN]
    assert mine[["source_row", "reason"]].values.tolist() == [
        [0, "schema_error" if how == "missing_column" else "unreadable_csv"]]
    assert set(saved["counts"]) == {*CSV_FILES, contracts.NORMALS_MANIFEST}
    assert saved["counts"][MASS_TRAIN]["error"]
    assert saved["counts"][MASS_TRAIN]["ingested"] == 0
    if how == "missing_column":  # one error, counted as every row of the file
        assert saved["counts"][MASS_TRAIN]["read"] == saved["counts"][MASS_TRAIN]["rejected"] == rows
    assert len(cases) > 0  # the other inputs still became cases


def test_a_row_with_too_many_fields_is_rejected_naming_its_line(data, tmp_path):
    path = data / "cbis" / MASS_TRAIN
    rows = len(pd.read_csv(path))
    lines = path.read_text().split("\n")
    n_fields = lines[0].count(",") + 1
    lines.insert(1, ",".join(["x"] * (n_fields + 2)))
    path.write_text("\n".join(lines))
    report = run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    _, rejects, _, _ = _tables(tmp_path / "out")
    bad = rejects[(rejects["source_file"] == MASS_TRAIN) & (rejects["source_row"] == 1)]
    assert bad["reason"].tolist() == ["malformed_row"]
    assert bad["message"].iloc[0] == f"{MASS_TRAIN} line 2: {n_fields + 2} fields where the header has {n_fields}"
    c = report.counts[MASS_TRAIN]
    assert (c.read, c.ingested, c.rejected) == (rows + 1, rows, 1)


def test_header_only_csv_stays_in_the_report_with_zero_rows(data, tmp_path):
    path = data / "cbis" / MASS_TRAIN
    path.write_text(path.read_text().splitlines()[0] + "\n")
    run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    _, _, _, saved = _tables(tmp_path / "out")
    assert saved["counts"][MASS_TRAIN] == {"read": 0, "ingested": 0, "rejected": 0, "error": ""}


def test_normals_manifest_with_other_column_names_is_one_schema_error_naming_the_expected_set(data, tmp_path):
    manifest = data / "normals" / contracts.NORMALS_MANIFEST
    df = pd.read_csv(manifest, dtype=str).rename(columns={"path": "file", "patient_id": "patient"})
    df.to_csv(manifest, index=False)
    with pytest.raises(IngestError, match=r"manifest.csv: missing column\(s\) \['patient_id', 'path'\]; "
                                          r"expected columns \['patient_id', 'side', 'view', 'path'\]"):
        run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    _, rejects, _, saved = _tables(tmp_path / "out")
    assert rejects[rejects["source_file"] == contracts.NORMALS_MANIFEST]["reason"].tolist() == ["schema_error"]
    assert saved["counts"][contracts.NORMALS_MANIFEST]["read"] == len(df)


# -- GCS: an unreachable bucket fails fast, in one line ----------------------------------------------


def test_unreachable_gcs_fails_within_the_deadline_in_one_line(tmp_path, monkeypatch):
    from gcs_emulator import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setattr(storage, "READ_DEADLINE_S", 2.0)
    monkeypatch.setattr(storage, "READ_RETRY", storage.RETRY.with_timeout(2.0))
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        run("gs://no-such-bucket/cbis", "gs://no-such-bucket/normals", tmp_path / "out", Config())
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("gs://no-such-bucket/cbis: Google Cloud Storage not reachable within 2 s")


def test_cli_prints_one_line_without_a_traceback(data, tmp_path):
    _break_csv(data / "cbis" / MASS_TRAIN, "empty")
    mammo = Path(sys.executable).with_name("mammo")
    done = subprocess.run([str(mammo), "ingest", "--data", str(data / "cbis"), "--normals", str(data / "normals"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"{MASS_TRAIN}: empty file (no header line)" in done.stderr

