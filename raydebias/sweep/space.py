"""Search spaces (a small YAML file of train.* field -> values, plus sweep settings), validated like config
values, and their translation into Ray Tune's param_space; one trial's config."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from raydebias.config import Config, SweepConfig, TrainConfig, load_config, replace_config
from raydebias.errors import ConfigError

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


TRIAL_KEYS = ("seed",)  # trial parameters that are not train.* fields


def default_space(cfg: Config) -> SearchSpace:
    """The config's own grid (``sweep.alpha`` x ``sweep.tau`` x ``sweep.toxic_weight``)."""
    s = cfg.sweep
    return SearchSpace(grid={"alpha": list(s.alpha), "tau": list(s.tau), "toxic_weight": list(s.toxic_weight)})


def sweep_settings(cfg: Config, space: SearchSpace) -> SweepConfig:
    """``cfg.sweep`` with the space file's settings applied (validated by ``parse_space`` already)."""
    import dataclasses

    return dataclasses.replace(cfg.sweep, **space.settings)


def param_space(space: SearchSpace, cfg: Config, settings: SweepConfig) -> tuple[dict[str, Any], int]:
    """Ray Tune's param_space and num_samples for a space. A pure grid repeated ``num_samples`` times
    would train identical trials: the repeats become a ``seed`` grid axis instead."""
    from ray import tune

    ps: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in space.grid.items()}
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    for key, spec in space.random.items():
        kind, args = next(iter(spec.items()))
        ps[key] = tune.choice(list(args)) if kind == "choice" else makers[kind](*args)
    samples = settings.num_samples
    if not space.random and samples > 1:
        ps["seed"] = tune.grid_search([cfg.seed + i for i in range(samples)])
        samples = 1
    return ps, samples


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """The sweep's config with one trial's parameters (train.* fields, and ``seed``), coerced and
    validated like config values (Tune hands numpy scalars and YAML ints for float fields)."""
    values = {("" if k in TRIAL_KEYS else "train.") + k: (v.item() if hasattr(v, "item") else v)
              for k, v in params.items()}
    return replace_config(cfg, values)
