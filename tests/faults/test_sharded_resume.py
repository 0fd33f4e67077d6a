"""kill -9 mid-epoch and resume on the same world size under sharded strategies: bit-identical to the run that was
never killed (CPU, deterministic algorithms), for both layers. The same worker as test_kill_resume, with
``--strategy``; sharded checkpoints are written per rank inside the same atomic commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

KILLS = ["save@2:1", "backward@5:1", "step@12:0"]  # mid-epoch after a save, inside a window, after a step


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layer", ["accelerator", "trainer"])
def test_fsdp_kill9_resume_is_bit_identical(layer: str, tmp_path: Path, fw: Any) -> None:
    reference = tmp_path / "reference"
    done = fw.run_worker(reference, 2, "--strategy", "fsdp", layer=layer)
    assert done.returncode == 0, fw.describe(done)
    want = fw.outcome(reference, 2)
    killed = tmp_path / "killed"
    runs = fw.run_until_done(killed, 2, "--strategy", "fsdp", "--kill", ",".join(KILLS), layer=layer)
    assert len(runs) == len(KILLS) + 1 and all(r.returncode != 0 for r in runs[:-1]), [fw.describe(r) for r in runs]
    checkpoints = sorted((killed / "checkpoints").glob("*/model/shard-r*.safetensors"))
    assert checkpoints, "no sharded checkpoint was written"
    fw.assert_identical(fw.outcome(killed, 2), want)
