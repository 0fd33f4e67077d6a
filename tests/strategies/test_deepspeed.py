"""DeepSpeed ZeRO-1/2/3 on 2 gloo processes (one launch for the session, ``_workers/ds_worker.py``): the same losses,
gradient norms and weights as DDP from both layers, the ZeRO-3 export, a save after ``trainer.test``, memory counted
per rank, and checkpoint files that are data, never code."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (pip install --no-build-isolation 'ember[deepspeed]')")

STAGES = ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _common() -> Any:
    spec = importlib.util.spec_from_file_location("ds_common", __file__.replace("test_deepspeed.py", "_workers/common.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layer", ["acc", "trainer"])
@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_matches_ddp(two_ranks: Any, ds: Any, layer: str, stage: str) -> None:
    """12 optimizer steps, accumulation 2, clipping at 1.0: the loss of every micro-batch, the global gradient norm
    of every step (Accelerator loop) and the final weights equal DDP's within float32 tolerance. A loss scaled twice
    for accumulation (accelerate#3533) would halve every norm; a scheduler stepped per micro-batch would end at a
    different learning rate."""
    common = _common()
    for rank, (results, tensors) in enumerate(zip(two_ranks.results, two_ranks.weights)):
        got, want = results[f"{layer}.{stage}"], results[f"{layer}.ddp"]
        assert got["steps"] == want["steps"] == common.STEPS
        assert len(got["losses"]) == common.STEPS * common.ACCUM
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]), **TOL)
        if layer == "acc":
            assert len(got["norms"]) == common.STEPS and max(want["norms"]) > 3 * common.CLIP  # clipping is active
            torch.testing.assert_close(torch.tensor(got["norms"]), torch.tensor(want["norms"]), **TOL)
            assert got["lr"] == pytest.approx(want["lr"]) == pytest.approx(common.LR * 0.5 ** 3)  # once per step
        mine = ds.weights_of(tensors, f"{layer}.{stage}.")
        if stage == "deepspeed_stage_3" and rank == 1:
            assert mine == {}  # the gathered state dict goes to rank 0 only
            continue
        ddp = ds.weights_of(tensors, f"{layer}.ddp.")
        assert mine.keys() == ddp.keys() and len(ddp) == len(common.make_model().state_dict())
        for k in ddp:
            torch.testing.assert_close(mine[k], ddp[k], **TOL, msg=f"rank {rank} {layer} {stage} {k}")


def test_zero3_export_is_one_plain_safetensors_file(two_ranks: Any, ds: Any) -> None:
    """``save_model`` under ZeRO-3 gathers every partition: plain ``load_state_dict`` (strict) takes the file."""
    exported = load_file(two_ranks.results[0]["acc.deepspeed_stage_3"]["export"])
    model = _common().make_model()
    model.load_state_dict(exported)  # strict: every key, every full shape
    ddp = ds.weights_of(two_ranks.weights[0], "acc.ddp.")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ddp[k], **TOL)


def test_save_after_trainer_test_completes_on_every_rank(two_ranks: Any) -> None:
    """fit, test, then save_checkpoint on both ranks (Lightning#18878 hangs here): the launch finished and the
    checkpoint holds both ranks' partitions."""
    after = [r["trainer.deepspeed_stage_3"]["after_test"] for r in two_ranks.results]
    assert after[0]["files"] == after[1]["files"]
    assert all(math.isfinite(a["test_loss"]) for a in after)  # logged without sync_dist: each rank's own value
    files = set(after[0]["files"])
    for rank in (0, 1):
        assert {f"model.zero-rank{rank}.safetensors", f"optimizer.zero-rank{rank}.json",
                f"optimizer.zero-rank{rank}.safetensors", f"state-rank{rank}.json"} <= files
    assert "manifest.json" in files and "trainer.json" in files


def test_memory_is_counted_per_rank(two_ranks: Any) -> None:
    """bf16 on 2 ranks: ZeRO-2 holds at most 55% of DDP's optimizer state; ZeRO-3 at most 55% of DDP's parameters
    + gradients + optimizer state (every tensor of the ZeRO optimizer counted, fp32 master copies included)."""
    for results in two_ranks.results:
        memory = results["memory"]
        ddp, zero2, zero3 = memory["ddp"], memory["deepspeed_stage_2"], memory["deepspeed_stage_3"]
        assert ddp["optimizer_state"] > 0 and ddp["total"] > 2 * ddp["optimizer_state"] * 0.9
        assert zero2["optimizer_state"] <= 0.55 * ddp["optimizer_state"], memory
        assert zero3["total"] <= 0.55 * ddp["total"], memory


def test_planted_pickle_never_runs_and_every_file_is_named(two_ranks: Any) -> None:
    """A pickle payload in any file of a ZeRO-2 checkpoint (its manifest fixed to match) is refused by name on the
    rank that reads it, and never executes; a flipped byte is reported by file name."""
    untrusted = [r["untrusted"] for r in two_ranks.results]
    assert not untrusted[0]["payload_ran"] and not untrusted[1]["payload_ran"]
    files = untrusted[0]["files"]
    assert {"optimizer.zero-rank0.safetensors", "optimizer.zero-rank1.json", "model.safetensors"} <= set(files)
    for name in files:
        messages = [u["errors"][name] for u in untrusted]
        assert all(m.startswith("CheckpointError") for m in messages), messages
        assert any(name in m for m in messages), (name, messages)
    flipped = [u["errors"]["flip:optimizer.zero-rank1.safetensors"] for u in untrusted]
    assert all("optimizer.zero-rank1.safetensors does not match its sha256" in m for m in flipped), flipped


def test_skipped_steps_are_counted_and_drop_their_gradients(two_ranks: Any, ds: Any) -> None:
    """``nonfinite="skip"``: a NaN loss on rank 1 skips that window on both ranks, and under ZeRO-2 its gradients
    (kept in the engine's partitions) are dropped too: the run ends where DDP's ends. Under fp16, DeepSpeed's own
    overflow skips are ember's skipped steps (the scheduler and ``accelerator.step`` follow them)."""
    for rank, (results, tensors) in enumerate(zip(two_ranks.results, two_ranks.weights)):
        ddp, zero2 = results["skip.ddp"], results["skip.zero2"]
        assert ddp["skipped"] == zero2["skipped"] == 1 and ddp["skipped_at"] == zero2["skipped_at"] == [5]
        assert zero2["steps"] == ddp["steps"] == 11
        want = ds.weights_of(tensors, "skip.ddp.")
        got = ds.weights_of(tensors, "skip.zero2.")
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL, msg=f"rank {rank} {k}")
        fp16 = results["skip.fp16"]
        assert 5 in fp16["skipped_at"] and fp16["skipped"] == fp16["engine_skipped"] == len(fp16["skipped_at"])
        assert fp16["steps"] + fp16["skipped"] == 12
        assert all(torch.isfinite(v).all() for v in ds.weights_of(tensors, "skip.fp16.").values())


def test_short_last_window_is_rescaled_inside_the_partitions(two_ranks: Any, ds: Any) -> None:
    """Windows of 5 over 24 micro-batches: the last one holds 4, and ember's mean rule multiplies its gradients by
    5/4 (through the ZeRO optimizer's loss scale), exactly as DDP's gradients are."""
    for rank, (results, tensors) in enumerate(zip(two_ranks.results, two_ranks.weights)):
        want = results["partial.ddp"]
        assert want["steps"] == 5
        for stage in ("deepspeed_stage_2", "deepspeed_stage_3"):
            got = results[f"partial.{stage}"]
            assert got["steps"] == 5
            torch.testing.assert_close(torch.tensor(got["norms"]), torch.tensor(want["norms"]), **TOL)
            if stage == "deepspeed_stage_3" and rank == 1:
                continue
            mine, ddp = ds.weights_of(tensors, f"partial.{stage}."), ds.weights_of(tensors, "partial.ddp.")
            for k in ddp:
                torch.testing.assert_close(mine[k], ddp[k], **TOL, msg=f"rank {rank} {stage} {k}")


def test_zero3_init_flag_builds_the_model_partitioned(two_ranks: Any) -> None:
    """``DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True)``: a model built in ``module_init_context()`` never
    exists whole on a rank (each holds about half), and trains exactly as the model built whole."""
    for results in two_ranks.results:
        got = results["zero3_init"]
        built = got["built"]
        assert built["visible"] == 0 and built["full"] > 0 and built["held"] <= 0.55 * built["full"]
        assert got["steps"] == 12
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(results["acc.ddp"]["losses"]), **TOL)
