"""Recovery from damage (docs/faults.md): a resume that skips a damaged newest checkpoint says so, the leftover is
moved aside (kept) when the run reaches that step again and training continues to the same result; a full disk on
rank 0 is reported as such by every rank; a folder that never was a checkpoint is called that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ember import Accelerator
from ember import checkpoint as ckpt


def damaged(root: Path, name: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(f".damaged-{name}-"))


@pytest.mark.timeout(240)
def test_accelerator_resumes_past_a_manifestless_newest_checkpoint(tmp_path: Path, fw: Any, references: Any) -> None:
    root = tmp_path / "checkpoints"
    first = fw.run_worker(tmp_path, 1, "--kill", "epoch@1")  # dies after the end-of-epoch-1 save of step 8
    assert first.returncode == -9, fw.describe(first)
    newest = root / "step-00000008"
    (newest / "manifest.json").unlink()  # the damage: a checkpoint that never got its manifest
    for run in range(2):  # the run gets past it, and a later rerun is not stuck on it either
        result = fw.run_worker(tmp_path, 1)
        assert result.returncode == 0, fw.describe(result)
        if run == 0:
            assert f"skipped {newest} (it has no manifest.json, so it was never committed" in result.output
            assert f"resuming from {root / 'step-00000006'} instead" in result.output
            assert "start at step 6" in result.output
            assert f"{newest} is not a complete checkpoint: it has no manifest.json" in result.output
            assert "Moved it aside to .damaged-step-00000008-" in result.output
    (kept,) = damaged(root, "step-00000008")
    assert (kept / "model.safetensors").is_file()  # moved aside, not deleted
    assert ckpt.verify(newest)["step"] == 8  # and step 8 was saved again, complete
    fw.assert_identical(fw.outcome(tmp_path, 1), references.get(1))


@pytest.mark.timeout(240)
def test_trainer_replaces_a_manifestless_last_checkpoint(tmp_path: Path, fw: Any, references: Any) -> None:
    root = tmp_path / "checkpoints"
    first = fw.run_worker(tmp_path, 1, "--kill", "epoch@1", layer="trainer")
    assert first.returncode == -9, fw.describe(first)
    (root / "last" / "manifest.json").unlink()
    result = fw.run_worker(tmp_path, 1, layer="trainer")
    assert result.returncode == 0, fw.describe(result)
    assert f"skipped {root / 'last'} (it has no manifest.json" in result.output
    assert f"{root / 'last'} is not a complete checkpoint" in result.output
    assert "Moved it aside to .damaged-last-" in result.output
    assert len(damaged(root, "last")) == 1 and ckpt.verify(root / "last")["step"] == 12
    fw.assert_identical(fw.outcome(tmp_path, 1), references.get(1, "trainer"))


@pytest.mark.timeout(240)
def test_full_disk_on_rank0_is_reported_by_every_rank(tmp_path: Path, fw: Any, references: Any) -> None:
    root = tmp_path / "checkpoints"
    outputs: list[str] = []
    # rank 0's first write of the save at step 4 fails with ENOSPC: rank 0 abandons the temporary folder at once
    runs = fw.run_until_done(tmp_path, 2, "--ckpt-fault", "enospc@4:1:0",
                             after_crash=lambda r: outputs.append(r.output))
    assert len(runs) == 2, [fw.describe(r) for r in runs]
    lines = outputs[0].splitlines()
    for rank in (0, 1):
        errors = [line for line in lines if line.startswith(f"[rank{rank}]:") and "CheckpointError" in line]
        assert errors and all("the disk is full" in line for line in errors), outputs[0][-6000:]
    assert "call begin(" not in outputs[0]
    assert ckpt.verify(root / "step-00000003")["step"] == 3  # the previous checkpoint is intact
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2))


def test_load_state_on_a_folder_that_never_was_a_checkpoint(tmp_path: Path) -> None:
    acc = Accelerator(cpu=True, verbose=False, project_dir=tmp_path / "runs")
    acc.prepare(torch.nn.Linear(2, 1))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(ckpt.CheckpointError) as err:
        acc.load_state(notes)
    message = str(err.value)
    assert "is not an ember checkpoint" in message and "todo.txt" in message
    assert "corrupted" not in message and "truncated" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="it is empty"):
        acc.load_state(tmp_path / "empty")
