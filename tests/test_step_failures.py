"""A step that refuses its data writes its reports first, prints a readable summary to stdout (what
the KFP UI shows of a failed step) and exits with ``runtime.EXIT_DATA_REJECTED``, a failure the
pipeline does not retry."""

import shutil

import pandas as pd
import pytest
from kfp.dsl import Dataset

from mammo.components.config import demo_config, run_config_dict
from mammo.components.ingest.component import ingest
from mammo.components.runtime import EXIT_DATA_REJECTED, DataRejected, fail_with_summary, report_summary


def test_summary_is_readable_and_bounded():
    text = report_summary("ingest", {"step": "ingest", "rows": 10, "reject_reasons": {"missing_file": 7},
                                     "rejects": [{"row": i} for i in range(50)]}, limit=5)
    lines = text.splitlines()
    assert lines[0] == "==== ingest: FAILED ====" and "rows: 10" in lines
    assert "  - missing_file: 7" in lines and "  ... 45 more" in lines


def test_fail_with_summary_prints_to_stdout_and_exits_with_the_no_retry_code(capsys):
    exc = fail_with_summary("ingest", "reject fraction above 0.05", {"rows": 3})
    assert isinstance(exc, DataRejected) and isinstance(exc, SystemExit) and exc.code == EXIT_DATA_REJECTED
    out = capsys.readouterr().out
    assert "==== ingest: FAILED ====" in out and "ingest refused its input: reject fraction above 0.05" in out


def test_ingest_component_refusing_the_data_shows_report_and_rejects(synth_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "cbis/CBIS-DDSM")  # every abnormal row: missing_file
    cases, rejects = Dataset(name="cases", uri=str(tmp_path / "cases")), Dataset(name="rejects", uri=str(tmp_path / "r"))
    config = run_config_dict(demo_config())
    with pytest.raises(SystemExit) as info:
        ingest.python_func(data_uri=str(data / "cbis"), normals_uri=str(data / "normals"), config=config,
                           cases=cases, rejects=rejects, data_fingerprint="sha256:x")
    assert info.value.code == EXIT_DATA_REJECTED
    out = capsys.readouterr().out
    assert "==== ingest: FAILED ====" in out and "reject fraction above ingest.max_reject_fraction" in out
    assert "missing_file" in out
    # the rejects artifact exists, so the UI lists it beside the failed step
    assert set(pd.read_parquet(tmp_path / "r")["reason"]) == {"missing_file"}
