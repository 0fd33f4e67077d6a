"""Must-show 3 (SIGTERM to one rank → every rank saves the same step and exits 75; the rerun matches) and
must-show 4 (`ember launch --max_restarts 1` restarts the group after a kill; the run finishes identical)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ember import Accelerator
from ember import checkpoint as ckpt
from ember.faults import PREEMPTED_EXIT_CODE, PreemptionHandler


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layer", ["accelerator"])
def test_sigterm_to_rank1_stops_both_ranks_at_the_same_step(layer: str, tmp_path: Path, fw: Any,
                                                            references: Any) -> None:
    # rank 1 receives SIGTERM after the backward of micro-batch 6, inside the window [5, 6, 7] that ends step 3;
    # checkpoints every 4 steps and at epoch ends (step 2), so step 3's is the one written because of the signal.
    flags = ["--handle-signals", "--save-every", 4]
    first = fw.run_worker(tmp_path, 2, *flags, "--signal", "SIGTERM@6:1", layer=layer)
    assert first.returncode == PREEMPTED_EXIT_CODE == 75, fw.describe(first)
    stopped = [json.loads((tmp_path / f"preempted-rank{r}.json").read_text()) for r in (0, 1)]
    assert stopped == [{"step": 3}, {"step": 3}]
    saved = ckpt.verify(tmp_path / "checkpoints" / "step-00000003")
    assert saved["step"] == 3 and {"state-rank0.json", "state-rank1.json"} <= set(saved["files"])
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002", "step-00000003"]
    second = fw.run_worker(tmp_path, 2, *flags, layer=layer)
    assert second.returncode == 0, fw.describe(second)
    assert "start at step 3" in second.output
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2, layer))


@pytest.mark.timeout(240)
def test_sigusr1_to_the_launcher_is_forwarded_and_both_ranks_stop(tmp_path: Path, fw: Any, references: Any) -> None:
    """SLURM's flow: the launcher gets SIGUSR1, forwards it to every worker, which save and exit; `ember launch`
    exits 75."""
    flags = ["--handle-signals", "--save-every", 100, "--step-sleep", 0.15]
    proc = subprocess.Popen(fw.command(tmp_path, 2, *flags), env=fw.clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        losses = tmp_path / "losses-rank1.txt"
        deadline = time.monotonic() + 120
        while not (losses.exists() and len(losses.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-6000:]
    stopped = [json.loads((tmp_path / f"preempted-rank{r}.json").read_text()) for r in (0, 1)]
    assert stopped[0] == stopped[1] and 1 <= stopped[0]["step"] < 6, stopped
    second = fw.run_worker(tmp_path, 2, "--handle-signals", layer="accelerator")
    assert second.returncode == 0, fw.describe(second)
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2))


@pytest.mark.timeout(120)
def test_sigusr1_on_one_process(tmp_path: Path, fw: Any, references: Any) -> None:
    first = fw.run_worker(tmp_path, 1, "--handle-signals", "--signal", "SIGUSR1@4")
    assert first.returncode == PREEMPTED_EXIT_CODE, fw.describe(first)
    assert json.loads((tmp_path / "preempted-rank0.json").read_text()) == {"step": 2}
    second = fw.run_worker(tmp_path, 1, "--handle-signals")
    assert second.returncode == 0, fw.describe(second)
    fw.assert_identical(fw.outcome(tmp_path, 1), references.get(1))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layer", ["accelerator", "trainer"])
def test_elastic_restart_resumes_on_its_own(layer: str, tmp_path: Path, fw: Any, references: Any) -> None:
    result = fw.run_worker(tmp_path, 2, "--kill", "backward@8:1", layer=layer, launch=("--max_restarts", "1"))
    assert result.returncode == 0, fw.describe(result)
    assert "SIGKILL at backward@8" in result.output
    if layer == "accelerator":
        assert result.output.count("start at step 3 (resumed from") == 2  # both ranks of the restarted group
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2, layer))


def test_preempted_agrees_only_at_step_boundaries(tmp_path: Path) -> None:
    import torch

    acc = Accelerator(cpu=True, handle_signals=True, gradient_accumulation_steps=2, project_dir=tmp_path,
                      verbose=False)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    try:
        assert not acc.preempted()
        os.kill(os.getpid(), signal.SIGUSR1)
        with acc.accumulate(model):  # first micro-batch of a window of 2: no agreement here
            acc.backward(model(torch.ones(1, 2)).sum())
            assert not acc.preempted()
        with acc.accumulate(model):
            acc.backward(model(torch.ones(1, 2)).sum())
            optimizer.step()
            optimizer.zero_grad()
        assert acc.preempted() and acc.preempted()  # sticky
        with pytest.raises(SystemExit) as exited:
            acc.exit_preempted()
        assert exited.value.code == PREEMPTED_EXIT_CODE
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN  # a second signal cannot cut the exit short
    finally:
        if acc._preemption is not None:
            acc._preemption.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_no_signal_handling_means_never_preempted_and_no_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    acc = Accelerator(cpu=True, project_dir=tmp_path, verbose=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert acc.preempted() is False


def test_handler_only_records_the_signal() -> None:
    handler = PreemptionHandler([signal.SIGUSR2]).install()
    try:
        assert handler.received is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert handler.received == signal.SIGUSR2
    finally:
        handler.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


@pytest.mark.timeout(240)
def test_trainer_sigterm_to_rank1_saves_the_same_step_and_resumes_exactly(tmp_path: Path, fw: Any,
                                                                          references: Any) -> None:
    """The Trainer layer: Trainer(handle_signals=True) saves step 3 on both ranks, exits 75, and the same command
    (fit(ckpt_path="last")) finishes identical to the uninterrupted run."""
    flags = ["--handle-signals", "--save-every", 4]
    first = fw.run_worker(tmp_path, 2, *flags, "--signal", "SIGTERM@6:1", layer="trainer")
    assert first.returncode == PREEMPTED_EXIT_CODE, fw.describe(first)
    assert "preempted: saved" in first.output and "at step 3" in first.output
    saved = ckpt.verify(tmp_path / "checkpoints" / "step-00000003")
    assert saved["step"] == 3 and {"state-rank0.json", "state-rank1.json", "trainer.json"} <= set(saved["files"])
    second = fw.run_worker(tmp_path, 2, *flags, layer="trainer")
    assert second.returncode == 0, fw.describe(second)
    fw.assert_identical(fw.outcome(tmp_path, 2), references.get(2, "trainer"))
