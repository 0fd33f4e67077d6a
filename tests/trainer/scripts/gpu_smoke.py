"""GPU checks of the Trainer (run by hand on a CUDA machine; CI has no GPU): hidden host syncs in the training
loop, bf16-mixed and 16-mixed (GradScaler) fits, and the devices=2 DDP parity over NCCL when 2 GPUs exist.

    PYTHONPATH=src python tests/trainer/scripts/gpu_smoke.py OUT_DIR
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "examples"))

import seed_lightning as seed  # noqa: E402

import ember as L  # noqa: E402
from ember.callbacks import Callback, LearningRateMonitor, ModelCheckpoint  # noqa: E402
from ember.loggers import CSVLogger  # noqa: E402


class SyncAudit(Callback):
    """Counts host<->device synchronisations during the training batches (torch's sync debug mode)."""

    def __init__(self) -> None:
        self.places: collections.Counter[str] = collections.Counter()
        self._catcher: Any = None
        self._records: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(None, None, None)
        for record in self._records:
            if "synchroniz" in str(record.message):
                self.places[f"{Path(record.filename).name}:{record.lineno}"] += 1


def fit(precision: str, out: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(seed.ProgressionTokens(256, seed=0), batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(seed.ProgressionTokens(64, seed=1), batch_size=16)
    audit = SyncAudit()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, precision=precision, max_epochs=3, gradient_clip_val=1.0,
        accumulate_grad_batches=2, log_every_n_steps=8, default_root_dir=str(out),
        logger=CSVLogger(out, name=precision), callbacks=[ModelCheckpoint(monitor="val_loss"), audit,
                                                           LearningRateMonitor("step")],
    )
    trainer.fit(seed.LLMFineTuner("gpt2-tiny", learning_rate=3e-3), train, val)
    steps = trainer.global_step
    return {"precision": precision, "global_step": steps, "val_loss": float(trainer.callback_metrics["val_loss"]),
            "best": Path(trainer.checkpoint_callback.best_model_path).name,
            "syncs_in_training": sum(audit.places.values()), "sync_places": dict(audit.places),
            "micro_batches": 3 * len(train), "log_intervals": steps // 8}


def ddp_parity(out: Path) -> dict[str, Any]:
    env = {**os.environ, "EMBER_TEST_ACCELERATOR": "gpu", "PYTHONPATH": str(HERE.parents[2] / "src")}
    a, t = out / "acc", out / "trainer"
    a.mkdir(parents=True, exist_ok=True)
    t.mkdir(parents=True, exist_ok=True)
    launch = [sys.executable, "-m", "ember.cli", "launch", "--num_processes", "2", str(HERE / "ddp_accelerator.py"), str(a)]
    subprocess.run(launch, env=env, check=True, cwd=HERE)
    subprocess.run([sys.executable, str(HERE / "ddp_trainer.py"), str(t)], env=env, check=True, cwd=HERE)
    from safetensors.torch import load_file

    ref, got = load_file(str(a / "params.safetensors")), load_file(str(t / "params.safetensors"))
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    ranks = [json.loads((t / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"max_abs_diff": diff, "equal": all(torch.equal(ref[k], got[k]) for k in ref), "ranks": ranks}


def main(out: Path) -> None:
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for precision in ("bf16-mixed", "16-mixed"):
        try:
            results[precision] = fit(precision, Path(tempfile.mkdtemp()))
        except Exception:
            results[precision] = {"error": traceback.format_exc()}
    if torch.cuda.device_count() >= 2:
        try:
            results["ddp_2gpu"] = ddp_parity(Path(tempfile.mkdtemp()))
        except Exception:
            results["ddp_2gpu"] = {"error": traceback.format_exc()}
    text = json.dumps(results, indent=2)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.json").write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
