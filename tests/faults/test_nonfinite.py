"""Must-show 5: a NaN on one rank is skipped on both ranks at the same step (they end identical), or halts both
with an error naming the step; neither hangs. Plus the guard's contract on one process: a skipped step leaves
weights, optimizer state, scheduler and GradScaler unchanged; fp16 overflow stays the GradScaler's business."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ember import Accelerator, EmberConfigError, GradScalerKwargs
from ember.faults import NonFiniteError


@pytest.mark.timeout(180)
def test_nan_on_rank1_is_skipped_on_both_ranks(tmp_path: Path, fw: Any) -> None:
    # micro-batch 7 ends the window [5, 6, 7], the step that would make accelerator.step 3
    result = fw.run_worker(tmp_path, 2, "--nonfinite", "skip", "--nan", "7:1")
    assert result.returncode == 0, fw.describe(result)
    assert "nonfinite='skip': step 2 had inf/NaN" in result.output
    got = fw.outcome(tmp_path, 2)
    assert [json.loads(r) for r in got.results] == [{"step": 5, "skipped": 1, "micro": 15}] * 2
    assert "7 nan" in got.losses[1] and "7 nan" not in got.losses[0]
    for k, v in got.params[0].items():
        assert torch.equal(v, got.params[1][k]) and bool(torch.isfinite(v).all()), k


@pytest.mark.timeout(180)
def test_nan_on_rank1_halts_both_ranks_naming_the_step(tmp_path: Path, fw: Any) -> None:
    result = fw.run_worker(tmp_path, 2, "--nonfinite", "halt", "--nan", "7:1", "--timeout", 30)
    assert result.returncode != 0
    assert result.seconds < 60, fw.describe(result)  # both raised at once; nobody waited for a timeout
    for r in (0, 1):
        assert f"[rank{r}]: ember.faults.NonFiniteError: nonfinite='halt': non-finite loss on rank(s) [1]" in \
            result.output, fw.describe(result)
    assert "at step 2 (accelerator.step" in result.output


def _setup(tmp_path: Path, **kwargs: Any) -> tuple[Accelerator, Any, Any, Any]:
    scaler = GradScalerKwargs(init_scale=256.0)  # the first fp16 step must not overflow
    acc = Accelerator(cpu=True, seed=0, project_dir=tmp_path, verbose=False, kwargs_handlers=[scaler], **kwargs)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    return acc, model, optimizer, scheduler


def _step(acc: Accelerator, model: Any, optimizer: Any, scheduler: Any, scale: float = 1.0) -> None:
    loss = model(torch.ones(3, 4)).float().pow(2).mean() * scale
    acc.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_skip_leaves_weights_optimizer_scheduler_and_scaler_unchanged(tmp_path: Path, precision: str) -> None:
    acc, model, optimizer, scheduler = _setup(tmp_path, nonfinite="skip", mixed_precision=precision)
    _step(acc, model, optimizer, scheduler)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
              scheduler.state_dict(), acc.precision.state_dict())
    _step(acc, model, optimizer, scheduler, scale=math.nan)
    assert (acc.step, acc.skipped_steps, acc.optimizer_step_was_skipped) == (1, 1, True)
    after = (model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), acc.precision.state_dict())
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    assert after[2] == before[2] and after[3] == before[3]
    _step(acc, model, optimizer, scheduler)  # training goes on
    assert (acc.step, acc.skipped_steps) == (2, 1)


def test_fp16_overflow_is_the_grad_scalers_business(tmp_path: Path) -> None:
    acc, model, optimizer, scheduler = _setup(tmp_path, nonfinite="halt", mixed_precision="fp16")
    scale = acc.precision.state_dict()["scaler"]["scale"]
    _step(acc, model, optimizer, scheduler, scale=1e37)  # finite loss, its scaled gradients overflow
    assert (acc.step, acc.skipped_steps) == (0, 1)  # skipped by the scaler, which backed off; no halt
    assert acc.precision.state_dict()["scaler"]["scale"] < scale


def test_halt_names_the_step(tmp_path: Path) -> None:
    acc, model, optimizer, scheduler = _setup(tmp_path, nonfinite="halt")
    _step(acc, model, optimizer, scheduler)
    with pytest.raises(NonFiniteError, match=r"non-finite loss on rank\(s\) \[0\].* at step 1 ") as err:
        _step(acc, model, optimizer, scheduler, scale=math.inf)
    assert err.value.step == 1 and err.value.loss_ranks == [0]


def test_inf_gradient_with_finite_loss_is_caught(tmp_path: Path) -> None:
    acc, model, optimizer, scheduler = _setup(tmp_path, nonfinite="skip")
    model.weight.register_hook(lambda g: g * math.inf)
    _step(acc, model, optimizer, scheduler)
    assert (acc.step, acc.skipped_steps) == (0, 1)


def test_off_by_default_and_bad_values_suggest(tmp_path: Path) -> None:
    acc = _setup(tmp_path)[0]
    assert acc._stepper.guard is None
    with pytest.raises(EmberConfigError, match='Did you mean "skip"'):
        Accelerator(cpu=True, nonfinite="skp")


@pytest.mark.timeout(180)
def test_trainer_nan_on_rank1_is_skipped_on_both_ranks(tmp_path: Path, fw: Any) -> None:
    """Trainer(nonfinite="skip"): the same collective decision through the structured layer."""
    result = fw.run_worker(tmp_path, 2, "--nonfinite", "skip", "--nan", "7:1", layer="trainer")
    assert result.returncode == 0, fw.describe(result)
    assert "nonfinite='skip': step 2 had inf/NaN" in result.output
    got = fw.outcome(tmp_path, 2)
    assert [json.loads(r)["step"] for r in got.results] == [5, 5]  # 6 windows, one skipped
    for k, v in got.params[0].items():
        assert torch.equal(v, got.params[1][k]) and bool(torch.isfinite(v).all()), k
