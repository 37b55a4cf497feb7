"""Promises about the repository itself: README commands, CI, cluster config, search spaces."""

import re
from pathlib import Path

import yaml

from raydebias.config import SweepConfig, _build

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_ci_runs_the_readme_test_command_after_the_readme_install():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    install, test = _bash_blocks(readme)[0].splitlines()[0], _bash_blocks(readme)[1].strip()
    assert test == ".venv/bin/python -m pytest"
    assert re.search(rf"^{re.escape(test)}$", ci, re.M), "CI must run exactly the README's test command"
    for step in install.split(" && "):
        pkg = step.split("install", 1)[-1].strip()
        assert pkg in ci, f"CI does not install {pkg!r} like the README"
    assert ci.index("torch==2.13.0") < ci.index("-e '.[dev]'")


def test_cluster_yaml_validates_offline_with_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    validate_config(cfg)
    workers = cfg["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    starts = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts  # the job API is not opened to the world
    assert any("[gpu]" in c for c in cfg["setup_commands"])
    assert not re.search(r"(?i)(aws_secret|aws_access_key|token\s*:)", (REPO / "cluster.yaml").read_text())


def test_alpha_space_is_the_papers_ablation():
    space = yaml.safe_load((REPO / "tune" / "spaces" / "alpha.yaml").read_text())
    sweep = _build(SweepConfig, space, "sweep")
    assert sweep.alpha == [1.0, 2.0, 4.0, 8.0, 16.0] and sweep.tau == [1.0] and sweep.toxic_weight == [1.5]


def test_readme_layout_lists_every_module_and_nothing_else():
    """The README's Layout tree names every Python file of the package (one line per file), and every file it
    names exists (issue #14: the tree matches the code)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    listed, stack = set(), []
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 20):  # a description's continuation line
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        stack = stack[:depth] + [name]
        if name.endswith(".py"):
            listed.add("/".join(s.rstrip("/") for s in stack))
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "raydebias").rglob("*.py")
             if p.name != "__init__.py" or p.parent.name in ("tiny",)} | {"raydebias/evaluate/tasks/__init__.py"}
    assert files - listed == set(), "modules missing from the README's Layout"
    assert {f for f in listed if f.startswith("raydebias/")} - files == set(), "README lists modules that do not exist"
