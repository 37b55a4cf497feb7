"""The training loop without Ray (LocalSession on a gloo process group): device-correct collectives,
the meta-device build with weights from rank 0, every precision (bf16/fp16 + sharded grad scaler on CPU),
activation checkpointing, sharded checkpoints + resume (also onto another world size), the workers' export,
and per-rank memory of a 2-rank run (about 1/2 of the parameters and optimizer state each)."""

import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from support import augmented_groups as groups
from support import free_port

from raydebias.config import load_config
from raydebias.models import load_model
from raydebias.train.distributed import Comm
from raydebias.train.loop import build_model, resolve_precision, run_local


def cfg_for(model="tiny:gpt2", precision="fp32", epochs=2, **train):
    over = [f"train.model={model}", f"train.precision={precision}", f"train.epochs={epochs}",
            "train.groups_per_batch=2", "train.max_length=128", "train.lr=0.005", "train.warmup_steps=1",
            f"train.bf16_when_supported={'false' if precision == 'fp16' else 'true'}",
            *[f"train.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in train.items()]]
    return load_config(None, over)


# ------------------------------------------------------------------------------------------------
# Collectives live on the model's device
# ------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def test_comm_builds_every_tensor_it_communicates_on_its_device(monkeypatch):
    """gloo accepts CPU tensors whatever the model's device, NCCL does not: check the device explicitly,
    on a device that is not the CPU (meta), so a tensor created without device= fails here too."""
    seen = []

    def record(t, *a, **k):
        seen.append(t.device)
        raise _Stop

    monkeypatch.setattr(dist, "all_reduce", record)
    monkeypatch.setattr(dist, "broadcast", record)
    comm = Comm("meta")
    for call in (lambda: comm.sum([1.0, 2.0]), lambda: comm.max([1.0]), lambda: comm.any(True),
                 lambda: comm.broadcast_tensor_(torch.zeros(2, device="meta"))):
        with pytest.raises(_Stop):
            call()
    assert seen == [torch.device("meta")] * 4
    with pytest.raises(ValueError, match="process group needs meta"):
        comm.broadcast_tensor_(torch.zeros(2))  # a CPU tensor for a meta (think: cuda) group


def test_the_loop_calls_no_collective_itself(tmp_path, monkeypatch):
    """Every collective of the loop, the checkpointing and the build goes through Comm (or FSDP2/DCP,
    which place their own tensors); a raw torch.distributed call from those modules fails the test."""
    ours = {"raydebias.train.loop", "raydebias.train.checkpoint", "raydebias.train.trainer"}
    callers = []
    for name in ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier",
                 "reduce_scatter_tensor", "all_gather_into_tensor", "gather_object"):
        real = getattr(dist, name)

        def wrapped(*a, _real=real, _name=name, **k):
            callers.append((sys._getframe(1).f_globals.get("__name__"), _name))
            return _real(*a, **k)

        monkeypatch.setattr(dist, name, wrapped)
    run_local(cfg_for(model="tiny:llama", epochs=1), groups(4), tmp_path / "ckpt", export_to=str(tmp_path / "model"))
    assert not [c for c in callers if c[0] in ours], callers
    via_comm = {op for mod, op in callers if mod == "raydebias.train.distributed"}
    assert {"all_reduce", "all_gather_object", "broadcast_object_list", "broadcast"} <= via_comm, via_comm


# ------------------------------------------------------------------------------------------------
# Build: meta device, weights from rank 0
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny:gpt2", "tiny:phi", "tiny:llama"])
def test_meta_build_holds_the_pretrained_weights_and_buffers(process_group, model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    cfg = cfg_for(model=model)
    built, _ = build_model(cfg, torch.device("cpu"), "fp32", Comm("cpu"))
    ref, _ = load_model(model, "causal_lm", dtype=torch.float32)
    full = get_model_state_dict(built, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    ref_sd = ref.state_dict()
    for k, v in ref_sd.items():
        assert torch.equal(full[f"lm.{k}"], v), k
    assert any(k.startswith("head.") for k in full)
    # buffers outside the state dict (rotary inv_freq) were copied, not left as to_empty garbage
    ref_buffers = dict(ref.named_buffers())
    for name, buf in built.lm.named_buffers():
        assert torch.allclose(buf, ref_buffers[name]), name
    assert not any(p.is_meta for p in built.parameters())


def test_resolve_precision_runs_the_presets_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp16", True, cpu) == "bf16"  # as on a bf16-capable GPU (SPEC §5)
    assert resolve_precision("fp16", False, cpu) == "fp16"
    assert resolve_precision("fp32", True, cpu) == "fp32"


# ------------------------------------------------------------------------------------------------
# Train, checkpoint, resume, export
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, ac", [("fp32", False), ("bf16", True), ("fp16", False)])
def test_precisions_train_checkpoint_resume_and_export(tmp_path, precision, ac):
    model = "tiny:llama"
    cfg = cfg_for(model=model, precision=precision, activation_checkpointing=ac)
    s = run_local(cfg, groups(), tmp_path / "ckpt", export_to=str(tmp_path / "model"))
    epochs = [r for r in s.reports if r.get("epoch_done")]
    assert [r["epoch"] for r in epochs] == [0, 1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in epochs)
    ckpts = sorted((tmp_path / "ckpt").iterdir())
    assert len(ckpts) == 2
    names = {p.name for p in ckpts[-1].iterdir()}
    assert {".metadata", "__0_0.distcp", "trainer_state.pt", "meta.json"} <= names
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["precision"] == precision and meta["step"] == 6 and meta["epoch_done"]
    # the export: a Hugging Face directory in the training precision, weights changed by training
    lm, tok = load_model(str(tmp_path / "model"), "causal_lm")
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert lm.dtype == want and type(lm).__name__ == "LlamaForCausalLM"
    base, _ = load_model(model, "causal_lm")
    changed = [k for k, v in base.state_dict().items() if not torch.allclose(lm.state_dict()[k].float(), v, atol=1e-3)]
    assert changed, "training changed no weight"
    head = load_file(str(tmp_path / "model" / "projection_head.safetensors"))
    assert set(head) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    # resume: a third epoch continues at step 7 from the sharded checkpoint
    s2 = run_local(cfg_for(model=model, precision=precision, epochs=3, activation_checkpointing=ac), groups(),
                   tmp_path / "ckpt")
    epochs2 = [r for r in s2.reports if r.get("epoch_done")]
    assert [r["epoch"] for r in epochs2] == [2] and epochs2[0]["step"] == 9
    assert epochs2[0]["loss"] < epochs[0]["loss"]


def test_a_restart_after_the_last_checkpoint_is_recorded(tmp_path):
    """A worker group restarted after the final checkpoint (say, during the export) trains nothing, but its
    resume must still reach stats.json: it checkpoints once more before exporting."""
    run_local(cfg_for(epochs=1), groups(4), tmp_path / "ckpt")
    s = run_local(cfg_for(epochs=1), groups(4), tmp_path / "ckpt", export_to=str(tmp_path / "model"))
    assert [r.get("epoch_done") for r in s.reports] == [True]
    latest = max((tmp_path / "ckpt").glob("step-*/meta.json"), key=lambda p: p.stat().st_mtime)
    meta = json.loads(latest.read_text())
    assert [(r["step"], r["epoch_done"]) for r in meta["resumes"]] == [(2, True)] and meta["step"] == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# Two ranks: memory per rank, and a resume onto one rank (DCP reshards)
# ------------------------------------------------------------------------------------------------


def _two_rank_worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from pathlib import Path

        run_local(cfg_for(epochs=1), groups(), Path(root) / "ckpt", export_to=str(Path(root) / "model"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_half_the_state_each_and_resume_on_one(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    (ckpt,) = sorted((tmp_path / "ckpt").iterdir())
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= {p.name for p in ckpt.iterdir()}
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["world_size"] == 2 and len(meta["consumed"]) == 6  # both ranks' ids
    mem = meta["memory"]
    assert [m["rank"] for m in mem] == [0, 1]
    for m in mem:
        assert 0.45 < m["param_shard_bytes"] / m["full_param_bytes"] < 0.55
        assert 1.8 < m["optim_shard_bytes"] / m["param_shard_bytes"] < 2.2
    assert (tmp_path / "model" / "model.safetensors").is_file()
    # one rank resumes the 2-rank checkpoint (DCP reshards on load) and trains the next epoch
    s = run_local(cfg_for(epochs=2), groups(), tmp_path / "ckpt")
    epochs = [r for r in s.reports if r.get("epoch_done")]
    assert [r["epoch"] for r in epochs] == [1] and epochs[0]["step"] == meta["step"] + 3


def test_loss_sums_report_means_per_batch_and_accuracy_per_pair(process_group):
    from raydebias.train.loop import LossSums
    from raydebias.train.loss import LossOutput

    def out(l_ce, l_cl, correct, pairs):
        return LossOutput(loss=torch.tensor(l_ce + 4 * l_cl), l_ce=torch.tensor(l_ce), l_cl=torch.tensor(l_cl),
                          lm_tokens=3, correct=correct, pairs=pairs)

    sums = LossSums() + LossSums.of(out(2.0, 0.5, 1, 4), 10) + LossSums.of(out(1.0, 0.25, 2, 2), 6)
    reduced = sums.all_reduce(Comm("cpu"))  # one rank: the sums themselves
    assert reduced == sums and (reduced.batches, reduced.tokens) == (2.0, 16.0)
    assert reduced.means(prefix="val_") == {"val_l_ce": 1.5, "val_l_cl": 0.375, "val_loss": 3.0,
                                            "val_contrastive_accuracy": 0.5}
    empty = LossSums().means()  # a step where every rank ran a filler batch: 0 losses, no accuracy
    assert empty["loss"] == 0.0 and empty["contrastive_accuracy"] != empty["contrastive_accuracy"]


def test_local_resume_takes_the_checkpoint_written_last_when_two_share_a_step(tmp_path, process_group):
    """An epoch-end checkpoint can share its step with the mid-epoch one written just before it; the newer
    one must win whatever the random suffix of its name (else the resume re-runs an empty epoch)."""
    from raydebias.train.checkpoint import STATE_META
    from raydebias.train.loop import LocalSession

    for name, ns in (("step-0000008-ffff", 1_000_000_000), ("step-0000008-0000", 2_000_000_000),
                     ("step-0000004-zzzz", 3_000_000_000)):
        meta = tmp_path / name / STATE_META
        meta.parent.mkdir()
        meta.write_text("{}")
        os.utime(meta, ns=(ns, ns))
    with LocalSession({}, tmp_path, "cpu").latest_checkpoint() as path:
        assert path == tmp_path / "step-0000008-0000"
