"""ModelSummary, Timer, ThroughputMonitor, OnExceptionCheckpoint, GradientAccumulationScheduler and
LearningRateFinder, each through a real Trainer run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from trainer_helpers import Regressor, loader, quiet_trainer

import ember as L
from ember._errors import EmberConfigError
from ember.callbacks import (
    Callback,
    GradientAccumulationScheduler,
    LearningRateFinder,
    ModelSummary,
    OnExceptionCheckpoint,
    ThroughputMonitor,
    Timer,
)
from ember.checkpoint import load_state, read_tensors
from ember.loggers import CSVLogger


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


class Slow(Regressor):
    """Each training step takes at least ``delay`` seconds."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.delay = delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(self.delay)
        return super().training_step(batch, batch_idx)


# --------------------------------------------------------------------------------------- ModelSummary


class Deep(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.frozen = torch.nn.Linear(4, 3)  # 15 parameters that do not train
        self.frozen.requires_grad_(False)


def test_model_summary_is_the_default_and_prints_the_table_once(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_model_summary=True)
    assert [type(c) for c in trainer.callbacks] == [ModelSummary]
    trainer.fit(Deep(), loader())
    out = capsys.readouterr().out
    assert out.count("Total params") == 1  # at fit start, not per epoch
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("| Name"))
    assert [c.strip() for c in lines[header].split("|")] == ["", "Name", "Type", "Params", "Trainable"]
    rows = [[c.strip() for c in line.split("|")] for line in lines[header + 2 : header + 4]]
    assert rows == [["0", "net", "Sequential", "49", "49"], ["1", "frozen", "Linear", "15", "0"]]
    assert "49        Trainable params" in out and "15        Non-trainable params" in out
    assert "64        Total params" in out
    assert "0.000     Total estimated model params size (MB)" in out  # 64 float32 = 256 bytes

    summary = next(c for c in trainer.callbacks if isinstance(c, ModelSummary))
    assert (summary.total_parameters, summary.trainable_parameters) == (64, 49)
    assert summary.model_size == pytest.approx(64 * 4 / 1e6)
    assert quiet_trainer(tmp_path, enable_model_summary=False).callbacks == []


def test_model_summary_depth(capsys: pytest.CaptureFixture[str]) -> None:
    deep = ModelSummary(max_depth=2)
    names = [name for name, *_ in deep.rows(Deep())]
    assert names == ["net", "net.0", "net.1", "net.2", "frozen"]
    assert [name for name, *_ in ModelSummary(max_depth=-1).rows(Deep())] == names
    big = torch.nn.Linear(1000, 1000)  # 1,001,000 parameters
    assert "1.0 M" in ModelSummary().table(torch.nn.Sequential(big))
    with pytest.raises(EmberConfigError, match="max_depth"):
        ModelSummary(max_depth=-2)


# --------------------------------------------------------------------------------------------- Timer


def test_timer_stops_training_after_the_duration(tmp_path: Path) -> None:
    timer = Timer(duration={"seconds": 0.25}, verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=1000, callbacks=[timer])
    trainer.fit(Slow(0.02), loader(n=400))
    # every step sleeps 20 ms, so 0.25 s hold at most 13 steps; the check runs after every batch
    assert trainer.should_stop and 1 <= trainer.global_step <= 13
    assert timer.time_elapsed("train") >= 0.25 and timer.time_remaining("train") <= 0
    assert timer.start_time("train") is not None and timer.end_time("train") is not None
    assert timer.time_elapsed("test") == 0.0 and timer.start_time("validate") is None


def test_timer_epoch_interval_and_stage_times(tmp_path: Path) -> None:
    timer = Timer(duration={"seconds": 0.05}, interval="epoch", verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=100, callbacks=[timer])
    trainer.fit(Slow(0.01), loader(n=40), loader(n=8, seed=1))  # 10 batches >= 0.1 s per epoch
    assert trainer.global_step == 10 and trainer.current_epoch == 1  # stopped at the first epoch end
    assert timer.time_elapsed("validate") > 0
    trainer.test(dataloaders=loader(n=8), verbose=False)
    assert timer.time_elapsed("test") > 0 and timer.end_time("test") is not None


def test_timer_resumed_run_counts_time_already_spent(tmp_path: Path) -> None:
    first = Timer(verbose=False)  # duration None: only measures
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[first])
    trainer.fit(Slow(0.02), loader())  # 5 steps >= 0.1 s
    spent = first.time_elapsed()
    assert spent >= 0.1 and first.time_remaining() is None
    path = trainer.save_checkpoint(tmp_path / "ckpt")
    assert load_state(path, "trainer")["callbacks"]["Timer"]["time_elapsed"]["train"] == pytest.approx(spent)

    resumed = Timer(duration={"seconds": 0.08}, verbose=False)  # less than already spent
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[resumed])
    trainer.fit(Slow(0.02), loader(), ckpt_path=path)
    assert trainer.global_step == 5  # no step: the time was used up before the resumed run began
    assert resumed.time_elapsed() >= spent


def test_max_time_is_a_timer_and_timer_arguments_are_checked(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_time="00:01:30:00")
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer.duration == 5400 and timer.interval == "step"
    own = Timer(duration={"hours": 2})
    assert [c for c in quiet_trainer(tmp_path, max_time={"hours": 1}, callbacks=[own]).callbacks] == [own]
    assert "max_time=...) is ignored" in capsys.readouterr().out
    with pytest.raises(EmberConfigError, match="DD:HH:MM:SS"):
        Timer(duration="an hour")
    with pytest.raises(EmberConfigError, match='Did you mean "step"'):
        Timer(interval="steps")
    with pytest.raises(EmberConfigError, match=r"keys of datetime\.timedelta"):
        Timer(duration={"hourz": 1})


# -------------------------------------------------------------------------- GradientAccumulationScheduler


class StepCounter(Callback):
    """Micro-batches of each optimizer step, per epoch, and the Accelerator's factor at each epoch start."""

    def __init__(self) -> None:
        self.windows: dict[int, list[int]] = {}
        self.factors: list[int] = []
        self._micro = 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.factors.append(trainer.accelerator.gradient_state.accumulation_steps)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._micro += 1

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.windows.setdefault(trainer.current_epoch, []).append(self._micro)
        self._micro = 0


def test_gradient_accumulation_scheduler_changes_steps_per_epoch(tmp_path: Path) -> None:
    counter = StepCounter()
    scheduler = GradientAccumulationScheduler(scheduling={0: 4, 2: 2, 3: 1})
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[scheduler, counter])
    trainer.fit(Regressor(), loader(n=40))  # 10 micro-batches per epoch
    assert counter.factors == [4, 4, 2, 1, 1]  # what the Accelerator used, set at each epoch start
    assert counter.windows == {
        0: [4, 4, 2],  # the last, partial window of an epoch steps
        1: [4, 4, 2],
        2: [2, 2, 2, 2, 2],
        3: [1] * 10,
        4: [1] * 10,
    }
    assert trainer.global_step == 3 + 3 + 5 + 10 + 10
    assert trainer.accumulate_grad_batches == 1  # the Trainer's own value is back after fit


def test_gradient_accumulation_scheduler_without_zero_key_and_bad_input(tmp_path: Path) -> None:
    scheduler = GradientAccumulationScheduler(scheduling={1: 5})
    assert scheduler.scheduling == {0: 1, 1: 5} and scheduler.going_to_accumulate_grad_batches()
    for bad, message in [({}, "non-empty dict"), ({-1: 2}, "epochs must be ints >= 0"),
                         ({0: 0}, "factors must be ints >= 1"), ({"2": 2}, "epochs must be ints"),
                         ({0: 1.5}, "factors must be ints"), ({True: 2}, "epochs must be ints")]:
        with pytest.raises(EmberConfigError, match=message):
            GradientAccumulationScheduler(scheduling=bad)  # type: ignore[arg-type]

    trainer = quiet_trainer(tmp_path, accumulate_grad_batches=2, callbacks=[GradientAccumulationScheduler({0: 2})])
    with pytest.raises(EmberConfigError, match="remove accumulate_grad_batches from the Trainer"):
        trainer.fit(Regressor(), loader())
    assert trainer.accelerator.prepared.models == []  # failed before the model was prepared

    class Manual(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    trainer = quiet_trainer(tmp_path, callbacks=[GradientAccumulationScheduler({0: 2})])
    with pytest.raises(EmberConfigError, match="needs automatic optimisation"):
        trainer.fit(Manual(), loader())


# ---------------------------------------------------------------------------------------- ThroughputMonitor


def test_throughput_monitor_measures_flops_and_logs_rates(tmp_path: Path) -> None:
    batch, features = 4, 4
    monitor = ThroughputMonitor(available_flops=1e9, prog_bar=True)
    marks: list[float] = []
    clock = monitor._now
    monitor._now = lambda trainer: marks.append(0.0) or clock(trainer)  # type: ignore[method-assign]
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=3, logger=logger, callbacks=[monitor])
    module = Slow(0.005)
    trainer.fit(module, loader(n=40, batch_size=batch))

    # the FLOP count is FlopCounterMode's for one batch forward + backward of the Linear(4, 1):
    # forward addmm 2*B*in*out, weight gradient 2*B*in*out (the input needs no gradient; bias and loss are free)
    x, y = next(iter(loader(n=40)))
    with FlopCounterMode(display=False) as reference:
        torch.nn.functional.mse_loss(module.net(x), y).backward()
    assert monitor.flops_per_batch == reference.get_total_flops() == 4 * batch * features * 1

    header, rows = _csv_rows(Path(logger.log_dir) / "metrics.csv")
    names = ["train/batches_per_sec", "train/samples_per_sec", "train/device/tflops_per_sec", "train/device/mfu"]
    assert set(names) <= set(header) and "train/tokens_per_sec" not in header  # no input_ids, no length_fn
    logged = [r for r in rows if r["train/samples_per_sec"]]
    # steps 1..20, logged at the log interval (step index 2, 5, 8, ...); the first step only starts the clock
    assert [int(r["step"]) for r in logged] == [2, 5, 8, 11, 14, 17]
    for row in logged:
        batches, samples = float(row["train/batches_per_sec"]), float(row["train/samples_per_sec"])
        assert 1 < batches < 200  # each step sleeps 5 ms
        assert samples == pytest.approx(batch * batches)
        device_flops = float(row["train/device/tflops_per_sec"]) * 1e12
        assert device_flops == pytest.approx(monitor.flops_per_batch * batches)
        assert float(row["train/device/mfu"]) == pytest.approx(device_flops / 1e9)
    assert "train/samples_per_sec" in trainer.progress_bar_metrics
    # the clock is read once to start and once per log interval: never per step
    assert len(marks) == 1 + len(logged)


class TokenModel(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.emb(batch["input_ids"]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        time.sleep(0.2)  # slow validation must not count as training time

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_throughput_monitor_counts_tokens_and_pauses_for_validation(tmp_path: Path) -> None:
    data = [{"input_ids": torch.randint(0, 10, (8,))} for _ in range(16)]
    monitor = ThroughputMonitor(flops_per_batch=1e6)
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=2, callbacks=[monitor],
                            val_check_interval=2)
    trainer.fit(TokenModel(), DataLoader(data, batch_size=2), DataLoader(data[:2], batch_size=2))
    metrics = monitor.metrics
    assert metrics["train/tokens_per_sec"] == pytest.approx(8 * metrics["train/samples_per_sec"])
    assert metrics["train/samples_per_sec"] == pytest.approx(2 * metrics["train/batches_per_sec"])
    assert metrics["train/device/tflops_per_sec"] == pytest.approx(1e6 * metrics["train/batches_per_sec"] / 1e12)
    assert "train/device/mfu" not in metrics  # CPU: no known peak unless available_flops is given
    # each logged interval (2 steps) holds a validation of 200 ms: had it counted, the rate would be < 10/s
    assert metrics["train/batches_per_sec"] > 10
    assert monitor.state_dict() == {"flops_per_batch": 1e6}

    lengths = ThroughputMonitor(length_fn=lambda b: 3, batch_size_fn=lambda b: 1)
    quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=1, callbacks=[lengths]).fit(
        TokenModel(), DataLoader(data, batch_size=2))
    assert lengths.metrics["train/tokens_per_sec"] == pytest.approx(3 * lengths.metrics["train/samples_per_sec"])
    assert lengths.metrics["train/samples_per_sec"] == pytest.approx(lengths.metrics["train/batches_per_sec"])
    with pytest.raises(EmberConfigError, match="flops_per_batch"):
        ThroughputMonitor(flops_per_batch=0)


# ---------------------------------------------------------------------------------- OnExceptionCheckpoint


class FailsAt(Regressor):
    def __init__(self, step: int, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.fail_step, self.error = step, error

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_step:
            raise self.error("boom")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_on_exception_checkpoint_is_written_and_resumable(tmp_path: Path, error: type[BaseException]) -> None:
    callback = OnExceptionCheckpoint(tmp_path / "ckpt")
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    module = FailsAt(3, error)
    with pytest.raises(error, match="boom"):
        trainer.fit(module, loader())  # 5 batches; the 4th fails
    assert trainer.state.status == ("interrupted" if error is KeyboardInterrupt else "failed")
    path = tmp_path / "ckpt" / "on_exception"
    assert callback.saved_path == str(path) and (path / "manifest.json").is_file()
    assert load_state(path, "trainer")["loop"]["batches_that_stepped"] == 3
    weights = read_tensors(path, "model.safetensors")
    assert torch.equal(weights["net.weight"], module.net.weight.detach())

    resumed = Regressor()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[OnExceptionCheckpoint(tmp_path / "ckpt")])
    trainer.fit(resumed, loader(), ckpt_path=path)
    assert trainer.global_step == 5
    assert not path.exists()  # a successful fit removes it (as Lightning)


def test_on_exception_checkpoint_skips_failures_before_training(tmp_path: Path) -> None:
    class NoOptimizer(Regressor):
        def configure_optimizers(self) -> Any:
            raise ValueError("no optimizer")

    trainer = quiet_trainer(tmp_path, callbacks=[OnExceptionCheckpoint(tmp_path)])
    with pytest.raises(ValueError, match="no optimizer"):
        trainer.fit(NoOptimizer(), loader())
    assert not (tmp_path / "on_exception").exists()
    with pytest.raises(EmberConfigError, match="filename"):
        OnExceptionCheckpoint(tmp_path, filename="")


# ------------------------------------------------------------------------------------ LearningRateFinder


class Momentum(Regressor):
    """SGD with momentum: the optimizer has state the sweep must not leave behind."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class Probe(Callback):
    """Placed after the finder: what the model and optimizer look like when training begins."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0]
        self.seen = {
            "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "global_step": trainer.global_step, "optimizer_state": dict(optimizer.state),
            "lr": optimizer.param_groups[0]["lr"], "metrics": dict(trainer.callback_metrics),
        }


def _train(root: Path, callbacks: list[Callback], lr: float = 0.05) -> tuple[Any, Momentum]:
    torch.manual_seed(0)
    module = Momentum(lr=lr)
    trainer = quiet_trainer(root, max_epochs=2, seed=0, callbacks=callbacks)
    trainer.fit(module, loader(n=40, shuffle=True))
    return trainer, module


def test_lr_finder_restores_the_model_and_sets_the_suggestion(tmp_path: Path) -> None:
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in Momentum().state_dict().items()}
    finder = LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=30, early_stop_threshold=None)
    probe = Probe()
    trainer, module = _train(tmp_path / "a", [finder, probe])

    result = finder.optimal_lr
    assert result is not None and len(result.results["lr"]) == len(result.results["loss"]) == 30
    assert result.results["lr"][0] == pytest.approx(1e-4) and result.results["lr"][-1] == pytest.approx(1.0)
    suggestion = result.suggestion()
    assert suggestion is not None and 1e-4 <= suggestion <= 1.0 and suggestion in result.results["lr"]
    for key, value in initial.items():  # the weights training starts from are those before the sweep
        assert torch.equal(probe.seen["weights"][key], value), key
    assert probe.seen["global_step"] == 0 and probe.seen["optimizer_state"] == {} and probe.seen["metrics"] == {}
    assert probe.seen["lr"] == suggestion and module.hparams.lr == suggestion

    # the rest of the run is exactly a run started with that learning rate: data order, RNG, counters restored
    plain_trainer, plain = _train(tmp_path / "b", [], lr=suggestion)
    assert trainer.global_step == plain_trainer.global_step == 20
    for (key, value), other in zip(module.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(value, other), key


def test_lr_finder_early_stop_attribute_and_checkpoint_state(tmp_path: Path) -> None:
    class Attr(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.learning_rate = 0.01

    finder = LearningRateFinder(min_lr=1e-3, max_lr=1e4, num_training_steps=60, attr_name="learning_rate")
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[finder])
    module = Attr()
    trainer.fit(module, loader(n=40))
    assert finder.optimal_lr is not None
    losses = finder.optimal_lr.results["loss"]
    assert len(losses) < 60  # the loss blew up at large learning rates: the sweep stopped early
    suggestion = finder.optimal_lr.suggestion()
    assert module.learning_rate == suggestion and trainer.optimizers[0].param_groups[0]["lr"] == suggestion

    state = json.loads(json.dumps(finder.state_dict()))  # checkpoints store it as JSON
    again = LearningRateFinder()
    again.load_state_dict(state)
    assert again.optimal_lr is not None and again.optimal_lr.suggestion() == suggestion
    assert again.lr_find(trainer, module) is again.optimal_lr  # a resumed run does not sweep again

    class NoLR(L.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = quiet_trainer(tmp_path, callbacks=[LearningRateFinder()])
    with pytest.raises(EmberConfigError, match="found no 'lr' or 'learning_rate' on NoLR"):
        trainer.fit(NoLR(), loader())
    assert trainer.accelerator.prepared.models == []  # before any model or data work
    with pytest.raises(EmberConfigError, match='Did you mean "linear"'):
        LearningRateFinder(mode="lineal")
    with pytest.raises(EmberConfigError, match="0 < min_lr < max_lr"):
        LearningRateFinder(min_lr=1.0, max_lr=0.1)


# ------------------------------------------------------------------------------------------ 2 processes


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_callbacks_on_two_processes(tmp_path: Path) -> None:
    import sys

    from trainer_helpers import SCRIPTS, run

    run([sys.executable, SCRIPTS / "ddp_callbacks.py", tmp_path])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for facts in ranks:
        assert facts["error"] == "both ranks fail here" and facts["global_step"] == 6
        # GradientAccumulationScheduler: 6 batches per rank and epoch; 2 per step in epoch 0, then 1
        assert facts["windows"] == {"0": [2, 2, 2], "1": [1, 1, 1]}
        assert facts["module_lr"] == facts["suggestion"] and len(facts["losses"]) == 15
        assert facts["timer_train"] > 0
        tp = facts["throughput"]  # per-rank rate x 2 ranks; 4 samples per batch
        assert tp["train/samples_per_sec"] == pytest.approx(4 * tp["train/batches_per_sec"])
        per_device = tp["train/batches_per_sec"] / 2 * facts["flops_per_batch"]
        assert tp["train/device/tflops_per_sec"] == pytest.approx(per_device / 1e12)
    # the sweep's losses are averaged over ranks: both ranks see the same curve and pick the same LR
    assert ranks[0]["losses"] == ranks[1]["losses"] and ranks[0]["suggestion"] == ranks[1]["suggestion"]
    # an error on every rank: the collective save worked, with each rank's state
    saved = tmp_path / "failed"
    assert (saved / "manifest.json").is_file()
    assert {p.name for p in saved.glob("state-rank*.json")} == {"state-rank0.json", "state-rank1.json"}
    assert load_state(saved, "trainer")["loop"]["batches_that_stepped"] == 6
