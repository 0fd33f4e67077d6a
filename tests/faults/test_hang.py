"""Must-show 6: a rank that stalls makes the job fail within the configured timeout + 60 s, naming the step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 10


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layer", ["accelerator", "trainer"])  # Accelerator(timeout=...), Trainer(timeout=...)
def test_stalled_rank_ends_the_job_within_timeout(layer: str, tmp_path: Path, fw: Any) -> None:
    # rank 1 sleeps forever before micro-batch 7; rank 0 reaches the gradient all-reduce of step 3 and waits there
    result = fw.run_worker(tmp_path, 2, "--stall", "7:1", "--timeout", TIMEOUT, timeout=TIMEOUT + 120, layer=layer)
    assert result.returncode != 0
    assert result.seconds < TIMEOUT + 60, fw.describe(result)
    assert "stalling at micro 7" in result.output
    assert (
        "ember.faults.CollectiveFailedError: rank 0/2: a collective in backward() at step 2 failed" in result.output
    ), fw.describe(result)
    assert "process-group timeout (10s)" in result.output


def test_step_watchdog_names_the_step_and_where_the_rank_is(capfd: pytest.CaptureFixture[str]) -> None:
    """The thread that names the step where NCCL would abort without a Python error (and on a stalled rank)."""
    import time

    from ember.faults import StepWatchdog

    def stuck_in_my_loop() -> None:
        dog = StepWatchdog(rank=1, timeout_s=0.2, read_step=lambda: 7).start()
        time.sleep(0.8)
        dog.stop()

    stuck_in_my_loop()
    err = capfd.readouterr().err
    assert "[ember] rank 1: no optimizer step for" in err and "still at step 7" in err, err
    assert "stuck_in_my_loop" in err and err.count("no optimizer step") == 1  # once per stall
