"""Must-show 2: a crash or a full disk in the middle of a save never leaves a checkpoint that loads as valid but is
incomplete; resume picks the previous complete one; keep_last=1 plus a crash mid-save still leaves a valid one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember import checkpoint as ckpt


def assert_only_complete_checkpoints(root: Path) -> dict[str, int]:
    """Every visible checkpoint directory (any name but a hidden one) verifies, sizes and sha256 (so it cannot load
    as valid while incomplete), and find_latest picks one of them. Returns {name: step}."""
    visible = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.exists() else []
    committed = {p.name: int(ckpt.verify(p, check_hashes=True)["step"]) for p in visible}
    latest = ckpt.find_latest(root)
    assert (latest is None) == (not committed)
    assert latest is None or latest.name in committed
    return committed


# 1 rank, a checkpoint every 2 steps (steps 2, 4, ..., 12); each fault hits one save, once.
EVERY_POINT = [
    "write@2:1",     # SIGKILL half-way through the first file of the very first save (nothing to resume)
    "write@4:5",     # half-way through the 5th file of the save of step 4 (step 2 must be used)
    "manifest@6",    # half-way through manifest.json
    "rename@8",      # everything written and fsynced, before the rename into place
    "latest@10",     # renamed into place, before `latest` is updated
    "enospc@12:3",   # the disk is full at the 3rd file: a clear error, step 10 intact
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("layer", "faults"), [
    ("accelerator", EVERY_POINT),
    ("trainer", ["write@2:1", "rename@6", "latest@8", "enospc@12:3"]),  # the Trainer writes `latest` itself
])
def test_crash_at_every_point_of_a_save(layer: str, faults: list[str], tmp_path: Path, fw: Any,
                                        references: Any) -> None:
    root = tmp_path / "checkpoints"
    seen: list[set[int]] = []

    def check(result: Any) -> None:
        seen.append(set(assert_only_complete_checkpoints(root).values()))
        if result.returncode != -9:
            assert "the disk is full" in result.output, fw.describe(result)
            assert 12 not in seen[-1] and 10 in seen[-1]
            assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]

    runs = fw.run_until_done(tmp_path, 1, "--ckpt-fault", ",".join(faults), layer=layer, after_crash=check)
    assert [r.returncode for r in runs] == [-9] * (len(faults) - 1) + [1, 0], [fw.describe(r) for r in runs]
    assert seen[0] == set()  # the first save never became visible
    if layer == "accelerator":  # killed in manifest.json, then before the rename: the previous step is the newest
        assert max(seen[2]) == 4 and max(seen[3]) == 6
    fw.assert_identical(fw.outcome(tmp_path, 1), references.get(1, layer))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("layer", "faults"), [
    ("accelerator", ["write@4:2", "retention@6", "rename@8"]),  # retention: killed while deleting step 4's
    ("trainer", ["write@4:2", "rename@8"]),                      # ModelCheckpoint(save_top_k=1)
])
def test_keep_last_1_survives_crashes_mid_save(layer: str, faults: list[str], tmp_path: Path, fw: Any,
                                               references: Any) -> None:
    root = tmp_path / "checkpoints"

    def check(result: Any) -> None:
        assert len(assert_only_complete_checkpoints(root)) >= 1, fw.describe(result)

    runs = fw.run_until_done(tmp_path, 1, "--keep-last", 1, "--ckpt-fault", ",".join(faults), layer=layer,
                             after_crash=check)
    assert len(runs) == len(faults) + 1, [fw.describe(r) for r in runs]
    steps = list(assert_only_complete_checkpoints(root).values())
    # the Trainer never deletes the checkpoint a fit resumed from (ModelCheckpoint's rule), so it may keep more
    assert steps == [12] if layer == "accelerator" else max(steps) == 12
    fw.assert_identical(fw.outcome(tmp_path, 1), references.get(1, layer))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layer", ["accelerator"])
def test_two_ranks_crash_and_full_disk_on_rank1(layer: str, tmp_path: Path, fw: Any, references: Any) -> None:
    root = tmp_path / "checkpoints"
    outputs: list[str] = []

    def check(result: Any) -> None:
        outputs.append(result.output)
        assert_only_complete_checkpoints(root)

    # rank 1 dies writing its state-rank1 file in the save of step 2; later its disk is full in the save of step 4
    runs = fw.run_until_done(tmp_path, 2, "--ckpt-fault", "write@2:1:1,enospc@4:1:1", layer=layer, after_crash=check)
    assert len(runs) == 3, [fw.describe(r) for r in runs]
    full = outputs[1]  # rank 1 names the full disk; rank 0 fails too (the same save), neither waits forever
    assert "the disk is full" in full, full[-5000:]
    assert all(f"[rank{r}]: ember.checkpoint._errors.CheckpointError" in full for r in (0, 1)), full[-5000:]
    assert "resumed from" in runs[2].output and "step-00000003" in runs[2].output
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2, layer))
