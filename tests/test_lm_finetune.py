"""Causal-LM fine-tuning (CDA / Dropout baselines): raydebias/train/lm_loop.py on a local process group."""

import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from raydebias.train.lm_loop import INPUT_IDS, LMFinetune, block_indices, run_lm_worker


def _blocks(tmp_path: Path, n: int = 10, length: int = 16) -> str:
    from raydebias.baselines.cda import group_texts
    from raydebias.models import load_tokenizer
    from raydebias.storage import StoragePath

    tok = load_tokenizer("tiny:gpt2")
    text = ("The river flows past the old mill. She said he would bake bread for the village. " * 20).split(". ")
    blocks = group_texts(tok(text)["input_ids"], length)[:n]
    dest = StoragePath.of(tmp_path / "blocks")
    with dest.replacing() as d:
        (d / "part-0.parquet").write_parquet(pa.table({INPUT_IDS: pa.array(blocks, pa.list_(pa.int32()))}))
    return dest.uri


class _Session:
    """LocalSession (its checkpoints under ``root``) that can fail once after a given number of checkpoints."""

    def __init__(self, root: Path, fail_after: int | None = None):
        from raydebias.train.loop import LocalSession

        self.inner = LocalSession({}, root, "cpu")
        self.rank, self.world, self.device = self.inner.rank, self.inner.world, self.inner.device
        self.fail_after, self.checkpoints = fail_after, 0

    def report(self, metrics, checkpoint_dir=None, name=None):
        self.inner.report(metrics, checkpoint_dir, name)
        if checkpoint_dir is not None:
            self.checkpoints += 1
            if self.fail_after is not None and self.checkpoints >= self.fail_after:
                raise RuntimeError("worker killed (test)")

    def latest_checkpoint(self):
        return self.inner.latest_checkpoint()


@pytest.fixture
def group():
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(29600 + os.getpid() % 1000)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_block_order_covers_every_block_once_per_pass():
    spec = LMFinetune(model="m", blocks="b", export_to=None, steps=10, per_device_batch=2, accumulation=3, seed=1)
    n, world = 24, 2  # 12 blocks per step: 2 steps make one pass
    seen = [i for step in range(2) for micro in range(3) for rank in range(world)
            for i in block_indices(step, rank, micro, n, spec, world)]
    assert sorted(seen) == list(range(n))
    nxt = [i for micro in range(3) for rank in range(world) for i in block_indices(2, rank, micro, n, spec, world)]
    first = [i for micro in range(3) for rank in range(world) for i in block_indices(0, rank, micro, n, spec, world)]
    assert nxt != first and len(set(nxt)) == 12  # the second pass starts a fresh permutation, no block twice


def test_finetune_trains_exports_and_resumes_exactly(tmp_path, group):
    blocks = _blocks(tmp_path)
    common = {"model": "tiny:gpt2", "blocks": blocks, "steps": 4, "per_device_batch": 2, "accumulation": 2,
              "lr": 1e-2, "checkpoint_every": 1, "seed": 3}
    # uninterrupted
    spec = LMFinetune(export_to=str(tmp_path / "a" / "model"), **common)
    session = _Session(tmp_path / "a" / "ckpt")
    assert run_lm_worker(spec, session)["step"] == 4
    losses = [r["loss"] for r in session.inner.reports]
    assert len(losses) == 4 and losses[-1] < losses[0]  # 10 blocks seen again and again: it learns them
    trained = _weights(tmp_path / "a" / "model")
    from raydebias.models import load_model

    base, _ = load_model("tiny:gpt2", "causal_lm")
    changed = [k for k, v in base.state_dict().items() if k in trained and not torch.equal(trained[k], v)]
    assert changed

    # killed after its 2nd checkpoint, then run again: resumes at step 2 and ends with the same weights
    spec_b = LMFinetune(export_to=str(tmp_path / "b" / "model"), **common)
    with pytest.raises(RuntimeError, match="worker killed"):
        run_lm_worker(spec_b, _Session(tmp_path / "b" / "ckpt", fail_after=2))
    session = _Session(tmp_path / "b" / "ckpt")
    run_lm_worker(spec_b, session)
    steps = [r["step"] for r in session.inner.reports]
    assert steps == [3, 4]  # nothing repeated, nothing lost
    resumed = _weights(tmp_path / "b" / "model")
    for k, v in trained.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6)


def test_dropout_variant_sets_dropout_in_the_exported_config(tmp_path, group):
    import json

    spec = LMFinetune(model="tiny:gpt2", blocks=_blocks(tmp_path, n=4), export_to=str(tmp_path / "m"), steps=1,
                      per_device_batch=2, accumulation=1, dropout=0.15, checkpoint_every=1)
    run_lm_worker(spec, _Session(tmp_path / "ckpt"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.15
