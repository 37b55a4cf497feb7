"""Sweep building blocks (paper Appendix H, Table 14; SPEC §6): search spaces, the Pareto front, tables.

A search space is a small YAML file: ``train.*`` field -> values, plus optional sweep settings::

    alpha: [1, 2, 4, 8, 16]            # a list is a grid axis
    tau: {loguniform: [0.05, 2.0]}     # random axes: uniform / loguniform [low, high], choice [...],
    toxic_weight: {choice: [1.0, 1.5]} #   randint [low, high)
    num_samples: 4                     # SweepConfig fields may be set here too

Every value a space can produce is validated like any config value (``train.alpha=-1`` is refused with
the dotted key named) before a trial starts. These functions are pure; the Ray Tune driver builds on them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from raydebias.config import ConfigError, SweepConfig, TrainConfig, load_config

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
_SWEEP_KEYS = {f.name for f in fields(SweepConfig)} - {"alpha", "tau", "toxic_weight"}


@dataclass
class SearchSpace:
    grid: dict[str, list[Any]] = field(default_factory=dict)      # train key -> values (crossed)
    random: dict[str, dict[str, Any]] = field(default_factory=dict)  # train key -> {distribution: args}
    settings: dict[str, Any] = field(default_factory=dict)        # SweepConfig overrides

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes (one empty point without a grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.grid[k] for k in keys))]


def _check_value(key: str, value: Any) -> None:
    load_config(None, [f"train.{key}={json.dumps(value)}"])


def _check_distribution(key: str, spec: dict[str, Any]) -> None:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"space key {key!r}: a random axis is one of {{{', '.join(DISTRIBUTIONS)}: ...}}, "
                          f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"space key {key!r}: choice needs a non-empty list, got {args!r}")
        for v in args:
            _check_value(key, v)
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)
            and args[0] < args[1]):
        raise ConfigError(f"space key {key!r}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"space key {key!r}: loguniform needs low > 0, got {args!r}")
    for v in ((args[0], args[1] - 1) if kind == "randint" else args):
        _check_value(key, v)


def parse_space(doc: dict[str, Any], where: str = "space") -> SearchSpace:
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{where}: a search space is a non-empty mapping of train keys to values")
    space = SearchSpace()
    for key, spec in doc.items():
        key = str(key).removeprefix("train.")
        if key in _SWEEP_KEYS:
            space.settings[key] = spec
            continue
        if key not in _TRAIN_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; search over train.* fields "
                              f"({', '.join(sorted(_TRAIN_KEYS))}) or set {', '.join(sorted(_SWEEP_KEYS))}")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: grid axis {key!r} is empty")
            for v in spec:
                _check_value(key, v)
            space.grid[key] = spec
        elif isinstance(spec, dict):
            _check_distribution(key, spec)
            space.random[key] = spec
        else:  # a single value: a one-point grid
            _check_value(key, spec)
            space.grid[key] = [spec]
    # the sweep settings must make a valid SweepConfig too
    load_config(None, [f"sweep.{k}={json.dumps(v)}"
                       for k, v in space.settings.items()])
    return space


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read search space {p}: {e}") from e
    return parse_space(doc, str(p))


def pareto_front(rows: Sequence[dict[str, Any]], minimize: str = "toxicity",
                 maximize: str = "faithfulness") -> list[dict[str, Any]]:
    """Rows not dominated by another (lower ``minimize`` and higher ``maximize``, one strictly), sorted by
    ``minimize``. Rows with a missing/NaN value on either axis are not on the front."""
    ok = [r for r in rows if _num(r.get(minimize)) and _num(r.get(maximize))]

    def dominates(a: dict, b: dict) -> bool:
        return (a[minimize] <= b[minimize] and a[maximize] >= b[maximize]
                and (a[minimize] < b[minimize] or a[maximize] > b[maximize]))

    front = [r for r in ok if not any(dominates(o, r) for o in ok if o is not r)]
    return sorted(front, key=lambda r: (r[minimize], -r[maximize]))


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not math.isnan(v)


def alpha_table(rows: Sequence[dict[str, Any]], by: str = "alpha",
                columns: Sequence[str] = ("toxicity", "faithfulness")) -> str:
    """The paper's Table 14: one line per value of ``by`` (mean over trials sharing it), as Markdown."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    lines = [f"| {by} | " + " | ".join(c.capitalize() for c in columns) + " | trials |",
             "|---|" + "---|" * (len(columns) + 1)]
    for value in sorted(groups):
        cells = []
        for c in columns:
            vals = [r[c] for r in groups[value] if _num(r.get(c))]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "n/a")
        lines.append(f"| {value:g} | " + " | ".join(cells) + f" | {len(groups[value])} |")
    return "\n".join(lines) + "\n"


__all__ = ["DISTRIBUTIONS", "SearchSpace", "alpha_table", "load_space", "parse_space", "pareto_front"]
