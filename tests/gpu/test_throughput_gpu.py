"""ThroughputMonitor on a real GPU (skipped without one): the peak-FLOP table, a measured FLOP count that follows
the matmul rule, and a plausible MFU for a bf16 matmul-bound model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on a GPU machine)"),
]

B, D, LAYERS = 8192, 4096, 4


def test_throughput_monitor_mfu_on_gpu(tmp_path: Any) -> None:
    import ember as L
    from ember.callbacks import ThroughputMonitor
    from ember.callbacks.throughput_monitor import peak_flops

    class Matmuls(L.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(*[torch.nn.Linear(D, D, bias=False) for _ in range(LAYERS)])
            self.register_buffer("x", torch.randn(B, D))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(self.x).float().pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    name = torch.cuda.get_device_name()
    peak = peak_flops(torch.device("cuda", torch.cuda.current_device()), "bf16-mixed")
    if "H100" in name or "H200" in name:
        assert peak is not None and peak >= 756e12
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: B)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=40, log_every_n_steps=10,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[monitor])
    trainer.fit(Matmuls(), DataLoader(TensorDataset(torch.zeros(64, 1)), batch_size=1))
    # forward: LAYERS products of 2*B*D*D; backward: the weight gradient of each layer and the input gradient
    # of all but the first (the buffer x needs none)
    assert monitor.flops_per_batch == (3 * LAYERS - 1) * 2 * B * D * D
    metrics = monitor.metrics
    print(f"{name}: peak {peak}, {metrics}")
    assert metrics["train/samples_per_sec"] == pytest.approx(B * metrics["train/batches_per_sec"])
    tflops = metrics["train/device/tflops_per_sec"]
    assert 50 < tflops < 1000
    if peak is not None:
        assert metrics["train/device/mfu"] == pytest.approx(tflops * 1e12 / peak)
        assert 0.05 < metrics["train/device/mfu"] < 1.0
