"""Per-item fault isolation, THE one way a batch stage keeps one bad input from failing its batch.

Models batch well, so a stage calls its function on the whole batch; if that raises (one bad text, one
over-long request, the batch's OOM) or returns the wrong number of results, every item is redone alone,
and an item that fails alone too gets a :class:`Failed` in its result slot while the others keep theirs.
Each caller records the failures its own way (an ``error`` drop in augmentation, an ``error`` column in
evaluation), so counts still add up: items in = results + recorded failures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_ERROR = 2000  # a traceback-sized message, not a novel


@dataclass(frozen=True)
class Failed:
    """The result slot of an item that failed even alone; ``error`` is "ExcType: message"."""

    error: str


def isolated(fn: Callable[[list[Any]], Sequence[Any]], items: list[Any], what: str,
             after_failure: Callable[[], None] | None = None) -> list[Any]:
    """``fn(items)`` -> one result per item; on failure, ``fn([item])`` per item, with :class:`Failed` for
    the items that fail alone too. ``after_failure`` runs after each failed call (e.g. free accelerator
    memory before the retries)."""
    if not items:
        return []
    try:
        results = list(fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"{what}: {len(results)} results for {len(items)} items")
        return results
    except Exception as batch_error:  # noqa: BLE001 - isolate the bad item, then record it
        log.warning("%s: batch of %d failed (%s: %s); retrying one by one", what, len(items),
                    type(batch_error).__name__, batch_error)
        if after_failure is not None:
            after_failure()
    results = []
    for item in items:
        try:
            (result,) = fn([item])
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: one item failed alone too: %s: %s", what, type(exc).__name__, exc)
            if after_failure is not None:
                after_failure()
            result = Failed(f"{type(exc).__name__}: {exc}"[:MAX_ERROR])
        results.append(result)
    return results


__all__ = ["MAX_ERROR", "Failed", "isolated"]
