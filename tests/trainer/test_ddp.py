"""Must-show 3: ``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` trains with 2 real processes (gloo) and
ends with the same parameters as the Accelerator-layer DDP loop on the same data and seed; sync_dist across ranks."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import SCRIPTS, ember_launch, run

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("accelerator")
    run(ember_launch("--cpu", "--num_processes", "2", SCRIPTS / "ddp_accelerator.py", out))
    return load_file(str(out / "params.safetensors"))


def check_run(out: Path, reference: dict[str, torch.Tensor]) -> None:
    got = load_file(str(out / "params.safetensors"))
    assert got.keys() == reference.keys()
    for key in reference:  # the same computation in the same order: bit-identical on CPU
        assert torch.equal(got[key], reference[key]), key
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [12, 12]  # 44 items → 6 batches of 4 per rank, 2 epochs
    # sync_dist: batch-size-weighted mean over both ranks = (1·1 + 2·2) / (1 + 2); local values stay local
    for r, facts in enumerate(ranks):
        m = facts["metrics"]
        assert m["synced_mean"] == pytest.approx(5 / 3)
        assert m["local_mean"] == float(r + 1)
        assert m["synced_max"] == 2.0 and m["synced_sum"] == 18.0
        assert m["step_synced"] == pytest.approx(0.5)
    with open(out / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["step_synced"]) for r in rows if r["step_synced"]] == [0.5] * 6  # every 2nd of 12 steps
    # ModelCheckpoint across ranks: same decisions, one committed directory per save, a state file per rank
    ckpts = sorted(p.name for p in (out / "ckpt").iterdir() if p.is_dir())
    assert ckpts == ["epoch=0-step=6", "last"]  # synced_mean is 5/3 in both epochs: no improvement in epoch 1
    assert {p.name for p in (out / "ckpt" / "last").glob("state-rank*.json")} == {"state-rank0.json", "state-rank1.json"}


def test_trainer_devices_2_launches_itself_and_matches_the_accelerator_loop(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    proc = run([sys.executable, SCRIPTS / "ddp_trainer.py", tmp_path])
    assert "Trainer(devices=2): starting 2 processes" in proc.stdout
    check_run(tmp_path, reference)


def test_trainer_joins_a_job_started_by_ember_launch(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    proc = run(ember_launch("--cpu", "--num_processes", "2", SCRIPTS / "ddp_trainer.py", tmp_path))
    assert "starting 2 processes" not in proc.stdout
    check_run(tmp_path, reference)
