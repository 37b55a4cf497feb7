"""The cache: stamps, per-model locking, atomic builds, `build` / `ensure`, and the CLI.

A model directory holds a stamp with the kit version and a hash of its inputs; a model whose stamp
matches is not rebuilt. A build happens in a temporary sibling directory that is renamed into place
under a per-model file lock.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout

from raydebias.tiny.inputs import training_corpus
from raydebias.tiny.ner import _build_spacy_ner, ner_patterns
from raydebias.tiny.registry import _BUILDERS, _LIBS, NAMES

# Bump whenever a builder changes what it writes: the stamps of existing caches then stop matching
# and every model is rebuilt on its next `ensure`.
KIT_VERSION = "raydebias-tiny-3"

STAMP_FILE = ".tiny-stamp.json"
LOCK_TIMEOUT_S = 600


class _Inputs:
    """Lazily computed build inputs, shared by all models of one `build` call."""

    def __init__(self) -> None:
        self._corpus: list[str] | None = None
        self._patterns: list[dict] | None = None
        self._memo: dict[str, object] = {}

    @property
    def corpus(self) -> list[str]:
        if self._corpus is None:
            self._corpus = training_corpus()
        return self._corpus

    @property
    def patterns(self) -> list[dict]:
        if self._patterns is None:
            self._patterns = ner_patterns()
        return self._patterns

    def memo(self, key: str, make: Callable[[], object]):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


def _check_names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(NAMES)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown tiny model name(s) {unknown}; valid names: {', '.join(NAMES)}")
    return list(dict.fromkeys(names))


def _expected_stamp(name: str, inputs: _Inputs) -> dict:
    builder = _BUILDERS[name]
    digest = hashlib.sha256()
    if builder is _build_spacy_ner:
        digest.update(json.dumps(inputs.patterns, sort_keys=True, ensure_ascii=False).encode())
    else:
        digest.update("\n".join(inputs.corpus).encode())
    return {
        "kit_version": KIT_VERSION,
        "name": name,
        "inputs_sha256": digest.hexdigest(),
        "libraries": {lib: metadata.version(lib) for lib in _LIBS[builder]},
    }


def _read_stamp(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _build_one(name: str, out_dir: Path, force: bool, inputs: _Inputs) -> tuple[Path, str]:
    """Build `name` into out_dir/name unless its stamp already matches; returns (path, status)."""
    target = out_dir / name
    expected = _expected_stamp(name, inputs)
    # Fast path without the lock: the stamp is written last, inside the temporary dir, before the
    # rename, so a directory whose stamp matches is complete.
    if not force and _read_stamp(target) == expected:
        return target, "cached"
    lock = FileLock(str(out_dir / f".{name}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            # Another process may have finished the same build while we waited for the lock.
            if not force and _read_stamp(target) == expected:
                return target, "cached"
            _build_locked(name, target, expected, inputs)
            return target, "built"
    except Timeout as exc:
        raise TimeoutError(
            f"waited {LOCK_TIMEOUT_S}s for another process to finish building tiny model {name!r} in "
            f"{out_dir} (lock {lock.lock_file}). The lock is released when its holder exits, so some "
            "process is still building or hung: find and stop it, then retry."
        ) from exc


def _build_locked(name: str, target: Path, stamp: dict, inputs: _Inputs) -> None:
    """Build into a temporary sibling of `target`, then swap it in by rename. Caller holds the lock."""
    out_dir = target.parent
    # Leftovers of builds that died (we hold the lock, so nobody is using them).
    for stale in list(out_dir.glob(f".{name}.tmp-*")) + list(out_dir.glob(f".{name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    old = None
    try:
        with _no_transformers_progress_bars():
            _BUILDERS[name](name, tmp, target, inputs)
        _check_complete(name, tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=1, sort_keys=True), encoding="utf-8")
        if target.exists():
            # A directory cannot be renamed over a non-empty one: move the stale build aside first.
            # Readers that race this only ever see no directory (and then wait on the lock) or a
            # complete one.
            old = out_dir / f".{name}.old-{uuid.uuid4().hex}"
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_complete(name: str, built: Path) -> None:
    """Refuse to publish a build without its weights. transformers 5 silently skips save_pretrained's
    files on torch.distributed ranks other than 0, which would leave a tokenizer-only "model"."""
    if _BUILDERS[name] is _build_spacy_ner:
        return
    missing = [f for f in ("config.json", "model.safetensors") if not (built / f).is_file()]
    if missing:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else None
        raise RuntimeError(
            f"building tiny model {name!r} wrote no {', '.join(missing)}"
            + (f" (this process is torch.distributed rank {rank}, where transformers skips save_pretrained)"
               if rank else "")
            + ". Build the tiny models before a process group starts: `python -m raydebias.tiny DIR` or "
            "resolve the `tiny:` id on the driver first.")


@contextlib.contextmanager
def _no_transformers_progress_bars():
    """Hide save_pretrained's per-model "Writing model shards" bars while building; restore after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # spacy-only environments can still build spacy-ner
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_with_status(
    out_dir: str | os.PathLike, names: Iterable[str] | None = None, force: bool = False
) -> dict[str, tuple[Path, str]]:
    """Like `build`, but each value is (path, "built" | "cached")."""
    selected = _check_names(names)
    out = Path(out_dir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the tiny-model directory {out} ({exc}); set RAYDEBIAS_TINY_DIR to a writable "
            "directory (or pass cache_dir/OUT_DIR)"
        ) from exc
    inputs = _Inputs()
    return {name: _build_one(name, out, force, inputs) for name in selected}


def build(
    out_dir: str | os.PathLike, names: Iterable[str] | None = None, force: bool = False
) -> dict[str, Path]:
    """Build the named tiny models (default: all) into out_dir/NAME; returns NAME -> directory.

    Models whose stamp matches the current kit version and inputs are left untouched unless `force`.
    Raises ValueError for unknown names.
    """
    return {name: path for name, (path, _) in build_with_status(out_dir, names, force).items()}


def default_cache_dir() -> Path:
    """$RAYDEBIAS_TINY_DIR if set, else ~/.cache/raydebias/tiny (read at call time)."""
    env = os.environ.get("RAYDEBIAS_TINY_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raydebias" / "tiny"


def ensure(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of tiny model `name`, building it into the cache first if needed."""
    _check_names([name])
    return build(cache_dir if cache_dir is not None else default_cache_dir(), [name])[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raydebias.tiny",
        description="Build the offline tiny random models (same classes as the production models).",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to build into (one subdir per model)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=NAMES, help="build only these models")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = parser.parse_args(argv)
    for name, (path, status) in build_with_status(args.out_dir, args.only, args.force).items():
        print(f"{name}\t{path}\t{status}", flush=True)
    return 0
