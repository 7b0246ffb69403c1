"""Small helpers shared by the KFP component bodies (kept out of the step logic)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr, the same in a pod, in kfp.local and in the CLI."""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "absl", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def artifact_dir(path: str) -> Path:
    """A KFP output artifact used as a directory (created)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- failing readably ------------------------------------------------------------------------------

#: exit code of a step that refused its data (a reject fraction over the limit, a critical
#: expectation): rerunning cannot help, so the pipeline does not retry these steps
EXIT_DATA_REJECTED = 3


class DataRejected(SystemExit):
    """A deterministic refusal of the data; exits with :data:`EXIT_DATA_REJECTED`."""

    def __init__(self, message: str):
        super().__init__(EXIT_DATA_REJECTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


def report_summary(step: str, report: dict, limit: int = 40) -> str:
    """A readable plain-text summary of a step's report: scalar fields, then lists and tables
    (at most ``limit`` lines each), for the pod log that the KFP UI shows of a failed step."""
    lines = [f"==== {step}: FAILED ===="]
    nested = []
    for key, value in report.items():
        if isinstance(value, (dict, list)):
            nested.append((key, value))
        else:
            lines.append(f"{key}: {value}")
    for key, value in nested:
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        lines.append(f"{key}:" + ("" if items else " (none)"))
        for k, v in items[:limit]:
            text = v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)
            lines.append(f"  - {k}: {text}"[:300])
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more")
    return "\n".join(lines)


def fail_with_summary(step: str, message: str, report: dict | None = None) -> DataRejected:
    """Print ``report``'s summary and ``message`` to stdout and return the exception to raise.

    Write the step's reports (artifacts) BEFORE calling this: the UI lists a failed step's
    output artifacts only if they exist. Usage: ``raise fail_with_summary("ingest", why, report)``.
    """
    if report:
        print(report_summary(step, report), flush=True)
    print(f"{step} refused its input: {message}", flush=True)
    return DataRejected(f"{step}: {message}")


# -- the pod's CPU budget --------------------------------------------------------------------------

#: environment variable the compiled pipeline sets on every task: the task's CPU request in cores
CPU_ENV = "MAMMO_CPUS"


def available_cpus() -> int:
    """Cores this process should use: ``MAMMO_CPUS`` (the pod's CPU request, set by the pipeline),
    else the cgroup CPU quota, else the CPUs this process may run on. Never the node's core count
    alone: a pod on a 96-core node with a 6-core request must not start 96 workers."""
    value = os.environ.get(CPU_ENV, "").strip()
    if value:
        cores = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
        return max(1, int(cores))
    quota = _cgroup_quota()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(affinity, quota) if quota else affinity)


def _cgroup_quota() -> int:
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return 0 if quota == "max" else max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return 0 if quota <= 0 else max(1, quota // period)
    except (OSError, ValueError):
        return 0
