"""Where the project's shared real data lives: $MAMMO_SHARED_DIR, else ``shared/`` beside the checkout,
else the workspace copy. Tests that need it skip with a clear message only when none exists."""

import os
from pathlib import Path


def _shared_dir() -> Path:
    candidates = [Path(os.environ["MAMMO_SHARED_DIR"])] if os.environ.get("MAMMO_SHARED_DIR") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DIR = _shared_dir()
REAL_DIR = SHARED_DIR / "data" / "real"
