"""Exactly-once writes while augmentation streams into training (``--stage all``).

The streamed rows reach the trainer and ``DIR/augmented`` at once (:func:`write_part`); when Ray Train
re-executes the stream after a worker restart, rows already written are skipped
(:func:`raydebias.augment.resume.unwritten`) and read back from the parts instead, so a row is neither
lost nor written twice.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from raydebias import schema as S
from raydebias.storage import StoragePath

__all__ = ["write_part"]


def write_part(batch: pa.Table, dest: StoragePath) -> pa.Table:
    """Pass-through: write a batch of augmented rows as one part file, atomically, and hand it on.

    Used when augmentation streams into training: the rows reach the trainer and ``DIR/augmented`` at
    once. The file name derives from the batch's ids, so a retried task rewrites the same file instead of
    duplicating rows; the file is written whole (StoragePath.write_bytes), so readers never see a part.
    """
    if batch.num_rows == 0:
        return batch
    ids = batch.column(S.ID).to_pylist()
    name = "part-" + hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20] + ".parquet"
    (dest / name).write_parquet(batch)
    return batch
