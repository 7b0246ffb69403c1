"""Small helpers shared by the KFP component bodies (kept out of the step logic)."""

from __future__ import annotations

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
