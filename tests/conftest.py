"""Shared fixtures: a small synthetic CBIS-DDSM download, and where the real CSVs are."""

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# fixtures gcs_server, gcs_client, gcs_bucket, flaky_gcs (tests/gcs_emulator.py)
pytest_plugins = ["gcs_emulator"]

#: the two end-to-end runs, by far the longest tests (every other one takes seconds)
LONGEST = ("test_container_e2e.py::test_docker_demo_promotes_deploys_and_records_each_tasks_image",
           "test_pipeline_local.py::test_local_run_ingests_trains_gates_deploys_and_the_model_predicts")


@pytest.fixture(autouse=True)
def _no_log_handler_left_on_a_closed_stream():
    """A CLI ``main()`` or component body run in-process calls ``runtime.setup_logging``, which points
    the root logger at this test's captured stderr; once pytest closes that stream, a log line from
    a server thread (the GCS emulator) would print "Logging error". Drop such handlers after the test."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


def pytest_collection_modifyitems(config, items):
    """Start the two longest tests first, on different workers.

    pytest-xdist's ``worksteal`` gives each worker a contiguous share of the collection and lets an
    idle worker steal from the end of a busy one's queue: with the first long test at the head of
    the collection and the second at its middle, each opens a different worker's share, and the
    short tests fill in around them. Without xdist this only changes the order.
    """
    longest = [item for item in items if item.nodeid.endswith(LONGEST)]
    rest = [item for item in items if item not in longest]
    if len(longest) == 2:
        half = len(rest) // 2
        items[:] = [longest[0], *rest[:half], longest[1], *rest[half:]]

def _real_csv_dir() -> Path:
    """MAMMO_CBIS_CSV_DIR, else ``../shared/data/cbis-ddsm`` beside the checkout, else the workspace copy."""
    if os.environ.get("MAMMO_CBIS_CSV_DIR"):
        return Path(os.environ["MAMMO_CBIS_CSV_DIR"])
    candidates = [Path(__file__).resolve().parents[2] / "shared/data/cbis-ddsm", Path("/work/shared/data/cbis-ddsm")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REAL_CSV_DIR = _real_csv_dir()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """``<dir>/cbis`` and ``<dir>/normals``: 12 rows per abnormal class, 12 normal CC images."""
    from mammo.components.synth.logic import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, per_class=12, seed=5, image_shape=(256, 160), progress=False)
    return out


@pytest.fixture
def real_csv_dir() -> Path:
    if not all((REAL_CSV_DIR / f).exists() for f in ("mass_case_description_train_set.csv",
                                                      "calc_case_description_test_set.csv")):
        pytest.skip(f"real CBIS-DDSM CSVs not found in {REAL_CSV_DIR} (set MAMMO_CBIS_CSV_DIR)")
    return REAL_CSV_DIR


@pytest.fixture(scope="session")
def container_images() -> dict[str, str]:
    """{"cpu": name, "gpu": name}: the project's images, built on this machine (`mammo images build`).

    Where Docker or the images are missing the container tests are skipped, except under CI=true,
    where they fail: CI (.ci/run) builds the images first and must run them.
    """
    from mammo.pipelines.images import DockerUnavailable, check_daemon, image_exists, image_names

    names = image_names()
    try:
        check_daemon()
        missing = [name for name in names.values() if not image_exists(name)]
        problem = f"images {missing} are not built (mammo images build --local-base)" if missing else None
    except DockerUnavailable as exc:
        problem = str(exc)
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI runs the container tests, but: {problem}")
        pytest.skip(problem)
    return names
