"""bf16-mixed under FSDP2: the Accelerator hands a prepared model's outputs back in float32 (as Accelerate does, and
as ember does without FSDP), the Trainer leaves them as computed (as Lightning does). One process, FSDP2 on a
one-rank gloo group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import ember as L
from ember import Accelerator, ProcessInfo
from ember.strategies import FSDPStrategy


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x))


def test_accelerator_outputs_are_float32_and_a_mixed_dtype_loss_trains() -> None:
    acc = Accelerator(cpu=True, strategy=FSDPStrategy(auto_wrap_policy={torch.nn.Sequential}),
                      mixed_precision="bf16", process=ProcessInfo(), verbose=False)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    seen: list[torch.dtype] = []
    model.inner.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    before = [p.detach().full_tensor().clone() for p in model.parameters()]  # sharded until the first forward
    out = model(x)
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]  # computed in bf16, handed back in float32
    acc.backward(F.mse_loss(model(x), y))  # a float32 target, the loss outside the model
    opt.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # parameters stay float32
    after = [p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    acc.end_training()


def test_trainer_outputs_stay_as_computed(tmp_path: Path) -> None:
    dtypes: list[torch.dtype] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            out = self(x)
            dtypes.append(out.dtype)
            return F.mse_loss(out.float(), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    trainer = L.Trainer(accelerator="cpu", strategy=FSDPStrategy(auto_wrap_policy={torch.nn.Sequential}),
                        precision="bf16-mixed", max_steps=2, default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.global_step == 2 and dtypes == [torch.bfloat16, torch.bfloat16]
