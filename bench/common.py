"""What every benchmark script sets up first: the repository on ``sys.path``, an offline, quiet, one-thread
environment for itself and the Ray workers it starts, and one JSON line per measurement (``emit``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAYDEBIAS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)
