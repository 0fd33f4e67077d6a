"""Must-show 1: kill -9 at >= 5 points, resume with the same command, finish bit-identical to the never-killed run,
for both layers (the Accelerator in a plain loop with load_state(); the Trainer with ModelCheckpoint and
fit(ckpt_path="last")), on 1 and 2 processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# 1 rank: 10 micro-batches per epoch, accumulation windows [0-2] [3-5] [6-8] [9], a checkpoint every 2 steps.
# 2 ranks: 5 micro-batches per rank per epoch, windows [0-2] [3-4], a checkpoint every step.
KILLS = {
    1: [
        "save@5",        # mid-epoch, right after the checkpoint of step 2
        "backward@13",   # inside an accumulation window (epoch 1), 4 micro-batches after the last checkpoint
        "backward@17",   # a second kill in the same epoch, after resuming from the first
        "epoch@1",       # exactly at the epoch boundary, after the end-of-epoch checkpoint
        "step@25",       # after an optimizer step, before its checkpoint (the step is redone)
    ],
    2: [
        "save@2:1",      # rank 1, mid-epoch, right after the checkpoint of step 1
        "backward@5:1",  # rank 1, inside the first window of epoch 1
        "backward@8:0",  # rank 0, a second kill in epoch 1 after the resume, inside the window [8, 9]
        "epoch@1:1",     # rank 1, at the epoch boundary
        "step@12:0",     # rank 0, after a step and before its checkpoint
    ],
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("layer", ["accelerator", "trainer"])
def test_kill9_anywhere_resumes_bit_identical(world: int, layer: str, tmp_path: Path, fw: Any, references: Any) -> None:
    want = references.get(world, layer)
    runs = fw.run_until_done(tmp_path, world, "--kill", ",".join(KILLS[world]), layer=layer)
    assert len(runs) == len(KILLS[world]) + 1, [fw.describe(r) for r in runs]
    assert all(r.returncode != 0 for r in runs[:-1])
    fired = sorted(p.name for p in (tmp_path / "markers").iterdir())
    assert len(fired) == len(KILLS[world]), fired
    fw.assert_identical(fw.outcome(tmp_path, world), want)
