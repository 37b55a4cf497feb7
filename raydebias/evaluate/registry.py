"""THE list of benchmarks: name (its ``evaluate.tasks`` value and its ``evaluate.<name>`` config section) ->
the module that holds its requests and metrics (raydebias/evaluate/tasks/<name>.py). Adding a benchmark is
that file, its config section and one line here.

This module imports nothing, so raydebias/config.py validates ``evaluate.tasks`` against it without
importing evaluation code (config stays the bottom layer: no import circle).
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "tldr": "raydebias.evaluate.tasks.tldr",
    "truthfulqa": "raydebias.evaluate.tasks.truthfulqa",
    "rtp": "raydebias.evaluate.tasks.rtp",
    "mmlu_pro": "raydebias.evaluate.tasks.mmlu_pro",
}

__all__ = ["BENCHMARKS"]
