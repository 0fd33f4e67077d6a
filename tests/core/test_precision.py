"""Must-show 5: every precision string trains on CPU; bf16 autocast really computes in bf16; fp16 overflow
skips the step (and the scheduler), and the loss scale backs off."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ember import Accelerator, GradScalerKwargs, ProcessInfo

# precision string -> (canonical name, parameter dtype, model output dtype outside autocast); "-mixed" computes in
# float16/bfloat16 and hands the outputs back in float32, as Accelerate does (test_bf16_autocast_... checks the kernel)
PRECISIONS = {
    "no": ("32-true", torch.float32, torch.float32),
    "32-true": ("32-true", torch.float32, torch.float32),
    "fp16": ("16-mixed", torch.float32, torch.float32),
    "16-mixed": ("16-mixed", torch.float32, torch.float32),
    "bf16": ("bf16-mixed", torch.float32, torch.float32),
    "bf16-mixed": ("bf16-mixed", torch.float32, torch.float32),
    "bf16-true": ("bf16-true", torch.bfloat16, torch.bfloat16),
    "16-true": ("16-true", torch.float16, torch.float16),
    "64-true": ("64-true", torch.float64, torch.float64),
}


def _accelerator(**kwargs: Any) -> Accelerator:
    return Accelerator(cpu=True, process=ProcessInfo(), verbose=False, **kwargs)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_every_precision_string_trains_on_cpu(precision: str, common: Any) -> None:
    name, param_dtype, out_dtype = PRECISIONS[precision]
    acc = _accelerator(mixed_precision=precision)
    assert acc.precision.name == name
    model = common.make_model()
    initial = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = common.make_data(16)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model, opt, loader = acc.prepare(model, opt, loader)
    assert {p.dtype for p in model.parameters()} == {param_dtype}
    for xb, yb in loader:
        assert xb.dtype == (param_dtype if name.endswith("-true") else torch.float32)  # inputs follow "-true"
        out = model(xb)
        assert out.dtype == out_dtype
        loss = F.mse_loss(out.float(), yb.float())
        acc.backward(loss)
        assert all(p.grad is not None and p.grad.dtype == param_dtype for p in model.parameters())
        opt.step()
        opt.zero_grad()
    assert acc.step >= 1
    after = {k: v.detach().double() for k, v in model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.allclose(after[k], initial[k]) for k in initial), "training did not change the parameters"


def test_bf16_autocast_computes_in_bf16_on_cpu() -> None:
    acc = _accelerator(mixed_precision="bf16")
    linear = torch.nn.Linear(16, 8)
    model = acc.prepare(linear)
    x = torch.randn(4, 16)
    out = model(x)
    assert out.dtype == torch.float32  # handed back in float32, as Accelerate and Fabric do
    bf16 = F.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16())
    assert torch.equal(out, bf16.float())  # the very same bf16 kernel result, widened
    assert not torch.equal(out.float(), F.linear(x, linear.weight, linear.bias))  # not an fp32 result cast down
    with acc.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert (x @ linear.weight.T).dtype == torch.bfloat16


class _TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        h = self.linear(x)
        return {"logits": h, "pair": (h.argmax(-1), h * 2)}


def test_outputs_come_back_in_float32_outside_autocast_and_stay_low_inside() -> None:
    """A loss computed outside autocast from a bf16 output and a float32 target used to fail in backward on some
    torch versions ("Found dtype Float but expected BFloat16"); Accelerate and Fabric return float32 outputs."""
    acc = _accelerator(mixed_precision="bf16")
    model = acc.prepare(_TwoOutputs())
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    out = model(x)
    assert out["logits"].dtype == torch.float32 and out["pair"][1].dtype == torch.float32
    assert out["pair"][0].dtype == torch.int64  # integer outputs untouched
    F.mse_loss(model(x)["logits"], y).backward()
    assert model.linear.weight.grad is not None and model.linear.weight.grad.dtype == torch.float32
    with acc.autocast():  # inside autocast (as in a Trainer step) the outputs stay as autocast made them
        assert model(x)["logits"].dtype == torch.bfloat16


def test_fp16_overflow_skips_the_step_and_the_scheduler_and_backs_off_the_scale() -> None:
    acc = _accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024.0)])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    scaler = acc.precision.scaler
    assert scaler is not None and scaler.get_scale() == 1024.0
    x = torch.randn(8, 4)
    before = [p.detach().clone() for p in model.parameters()]

    acc.backward(model(x).float().pow(2).mean() * 1e30)  # finite in fp32, overflows the fp16 backward
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    sched.step()
    assert opt.step_was_skipped is True and acc.optimizer_step_was_skipped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert sched.last_epoch == 0 and sched.get_last_lr() == [0.1]
    assert scaler.get_scale() == 512.0
    assert acc.step == 0

    opt.zero_grad()
    acc.backward(model(x).float().pow(2).mean())
    opt.step()
    sched.step()
    assert opt.step_was_skipped is False
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert sched.last_epoch == 1 and sched.get_last_lr() == [0.05]
    assert scaler.get_scale() == 512.0 and acc.step == 1
