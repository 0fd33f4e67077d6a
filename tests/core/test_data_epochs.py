"""Issue 13 and defects 3, 4, 5, 9 of issue 7: a prepared loader's epochs, its resume, and how it shards.

A prepared DataLoader starts a new epoch on every ``iter()`` (after exhaustion by ``next()``, after ``break``),
``len()`` is what the next ``iter()`` yields, and a resumed position is used once. Resuming after a kill
mid-epoch, with ember's automatic position or with Accelerate's ``skip_first_batches`` recipe, gives the
batches and the bit-identical weights of the run that never stopped, on 1 and 2 processes, with and without
DataLoader workers. The 2-process runs use real processes (``ember launch --cpu``, gloo); the references are
plain PyTorch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from ember import Accelerator, EmberConfigError, ProcessInfo
from ember.data import IterableShard, ResumableSampler, skip_first_batches, splits_itself

pytestmark = pytest.mark.timeout(300)

WORKER = Path(__file__).parent / "_workers" / "data_worker.py"
N_ITEMS, BATCH, SEED, EPOCHS = 24, 2, 7, 2
TRAIN_PLAN = {1: (5, 17), 2: (4, 10)}  # save every k steps, killed after step n (as in the worker)
CONFIGS = [(1, 0), (1, 2), (2, 0), (2, 2)]  # (processes, DataLoader workers)


def _command(tools: Any, world: int, *args: Any) -> list[Any]:
    if world == 1:
        return [sys.executable, WORKER, *args]
    return [*tools.EMBER, "launch", "--num_processes", "2", "--cpu", WORKER, *args]


def _read(out: Path, name: str, world: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in range(world)]


def _reference_epoch(world: int, rank: int, epoch: int) -> list[list[int]]:
    """Plain PyTorch: a DistributedSampler over all items (seed and set_epoch as ember's), global batches of
    world x BATCH; ember's batch-interleaved sharding gives rank r the r-th slice of each global batch."""
    dataset = TensorDataset(torch.arange(N_ITEMS))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=BATCH * world, sampler=sampler)
    return [batch.tolist()[rank * BATCH : (rank + 1) * BATCH] for (batch,) in loader]


def _accelerator(**kwargs: Any) -> Accelerator:
    return Accelerator(cpu=True, process=ProcessInfo(), verbose=False, **kwargs)


def _shuffled(acc: Accelerator, n: int = N_ITEMS, workers: int = 0) -> Any:
    return acc.prepare(DataLoader(TensorDataset(torch.arange(n)), batch_size=BATCH, shuffle=True,
                                  num_workers=workers))


def _ids(loader: Any) -> list[list[int]]:
    return [b.tolist() for (b,) in loader]


# ----------------------------------------------------------------------------------------------------------
# 1 and 2 processes, 0 and 2 workers: three launches each (the epoch checks and the uninterrupted training;
# the run killed mid-epoch; both resumes, each from its own copy of the killed run's checkpoints)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{w}proc-{n}workers" for w, n in CONFIGS])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tools: Any) -> Any:
    world, workers = request.param
    out = tmp_path_factory.mktemp(f"runs{world}{workers}")
    tools.run(_command(tools, world, out, "--workers", workers, "epochs", "full"), timeout=240)
    killed = subprocess.run([str(c) for c in _command(tools, world, out, "--workers", workers, "kill")],
                            env=tools.clean_env(), capture_output=True, text=True, timeout=240)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    for mode in ("auto", "accelerate"):
        shutil.copytree(out / "kill", out / mode)
    tools.run(_command(tools, world, out, "--workers", workers, "auto", "accelerate"), timeout=240)
    return world, out


@pytest.fixture()
def epoch_run(runs: Any) -> Any:
    world, out = runs
    return world, _read(out, "epochs", world)


def test_every_iter_starts_a_new_epoch_in_the_order_of_a_plain_loader(epoch_run: Any) -> None:
    world, ranks = epoch_run
    per_epoch = N_ITEMS // (BATCH * world)
    for rank, got in enumerate(ranks):
        assert got["world"] == world
        ref = [_reference_epoch(world, rank, e) for e in range(4)]
        assert got["len_start"] == per_epoch
        # exactly len() batches taken with next(), then a new iter(): a whole new epoch
        assert got["by_next"] == ref[0]
        assert got["len_after_next"] == per_epoch
        assert got["after_next"] == ref[1]
        assert got["len_after_full"] == per_epoch
        # break after 2 batches, then a new loop: a whole new epoch, not the rest of the old one
        assert got["broken"] == ref[2][:2]
        assert got["len_after_break"] == per_epoch
        assert got["after_break"] == ref[3]
        assert got["state_end"] == {"epoch": 4, "batches_consumed": 0}
    # the shuffle differs between epochs, and the ranks split every epoch exactly
    assert len({json.dumps(_reference_epoch(world, 0, e)) for e in range(4)}) == 4
    for key in ("by_next", "after_next", "after_break"):
        items = sorted(i for got in ranks for batch in got[key] for i in batch)
        assert items == list(range(N_ITEMS)), key


def test_defect_5_iterable_dataset_is_sharded_once_by_rank_and_worker(epoch_run: Any) -> None:
    """16 items, 2 workers: a worker-aware dataset is not split by worker a second time (it lost 8 of 16 on 2
    ranks), a plain one is split by worker too (each worker read it whole: every item twice on 1 rank)."""
    world, ranks = epoch_run
    for name in ("worker_aware", "plain"):
        seen = [got[name] for got in ranks]
        assert sorted(i for items in seen for i in items) == list(range(16)), (name, seen)
        assert [len(items) for items in seen] == [16 // world] * world, (name, seen)


def test_defect_3_worker_random_streams_differ_across_ranks_and_epochs(epoch_run: Any) -> None:
    world, ranks = epoch_run
    draws = [[v for _, values in got["epochs"][e] for v in values] for got in ranks for e in range(2)]
    assert all(len(d) == 8 // world for d in draws)
    flat = [v for d in draws for v in d]
    assert len(set(flat)) == len(flat), "a random draw repeats across ranks or epochs"


@pytest.mark.parametrize("mode", ["auto", "accelerate"])
def test_resume_after_a_kill_mid_epoch_gives_the_batches_and_weights_of_the_run_that_never_stopped(
    runs: Any, mode: str
) -> None:
    world, out = runs
    save_every, kill_at = TRAIN_PLAN[world]
    resumed_from = kill_at // save_every * save_every
    full, killed, resumed = (_read(out, m, world) for m in ("full", "kill", mode))
    steps_per_epoch = full[0]["steps_per_epoch"]
    assert resumed_from % steps_per_epoch != 0 and resumed_from > steps_per_epoch  # mid-epoch, not the first
    for rank in range(world):
        log = resumed[rank]["log"]
        assert log[0]["step"] == resumed_from + 1  # no batch skipped twice, none replayed beyond the checkpoint
        assert [e["step"] for e in killed[rank]["log"]] == list(range(1, kill_at + 1))
        assert killed[rank]["log"][:resumed_from] + log == full[rank]["log"]  # batches, epochs, losses
        want = torch.load(out / f"weights-full-rank{rank}.pt")
        got = torch.load(out / f"weights-{mode}-rank{rank}.pt")
        assert all(torch.equal(got[k], want[k]) for k in want), f"rank {rank}: weights differ"
    assert len(full[0]["log"]) == EPOCHS * steps_per_epoch


# ----------------------------------------------------------------------------------------------------------
# one process, in this process: resume semantics (defect 9), worker streams per epoch (defect 4), skipping
# ----------------------------------------------------------------------------------------------------------
def _saved_mid_epoch(tmp_path: Path, consumed: int) -> tuple[Path, list[list[int]]]:
    """A checkpoint taken inside the loop after ``consumed`` batches of epoch 0, and that whole epoch."""
    acc = _accelerator(seed=SEED, project_dir=tmp_path)
    loader = _shuffled(acc)
    epoch: list[list[int]] = []
    for (batch,) in loader:
        epoch.append(batch.tolist())
        if len(epoch) == consumed:
            path = acc.save_state()
    return path, epoch


def test_defect_9_set_epoch_after_load_state_keeps_the_restored_position(tmp_path: Path) -> None:
    path, epoch0 = _saved_mid_epoch(tmp_path, consumed=5)
    acc = _accelerator(seed=SEED, project_dir=tmp_path)
    loader = _shuffled(acc)
    acc.load_state(path)
    loader.set_epoch(0)  # the DistributedSampler habit
    assert _ids(loader) == epoch0[5:]
    loader.set_epoch(1)  # an epoch that ran to its end is the same as the next one: nothing to reset
    assert _ids(loader) == _reference_epoch(1, 0, 1)


def test_defect_9_after_load_state_batches_left_is_what_the_loader_yields_and_len_the_epoch(tmp_path: Path) -> None:
    """``len()`` stays a whole epoch (PyTorch's and Accelerate's meaning: Accelerate's resume recipes compute
    ``resume_step // len(loader)`` after ``load_state``); ``batches_left`` is what the next ``iter()`` yields."""
    path, epoch0 = _saved_mid_epoch(tmp_path, consumed=5)
    acc = _accelerator(seed=SEED, project_dir=tmp_path)
    loader = _shuffled(acc)
    acc.load_state(path)
    assert (loader.batches_left, len(loader), loader.batches_per_epoch) == (7, 12, 12)
    batches = []
    for (batch,) in loader:
        assert len(loader) == 12  # while an epoch runs, the next iter() is a whole new epoch
        batches.append(batch.tolist())
    assert batches == epoch0[5:] and len(loader) == 12
    assert _ids(loader) == _reference_epoch(1, 0, 1)


def test_defect_9_sampler_len_is_constant_time_and_exact() -> None:
    big = ResumableSampler(5_000_000, batch_size=32, num_replicas=8, rank=3, shuffle=True)
    start = time.perf_counter()
    lengths = {len(big) for _ in range(1000)}
    assert time.perf_counter() - start < 0.5  # building the permutation took ~0.9 s per call
    assert lengths == {5_000_000 // 256 * 32 + 32}  # 19531 whole rounds, then the padded last one
    for length in (0, 1, 7, 10, 13, 24):
        for bs, world in ((1, 1), (2, 1), (3, 2), (4, 3)):
            for rank in range(world):
                for even, drop in ((True, False), (False, False), (True, True)):
                    s = ResumableSampler(length, batch_size=bs, num_replicas=world, rank=rank, even_batches=even,
                                         drop_last=drop)
                    s.start_batch = 1
                    assert s.num_local_items() == len(s._local_indices()), (length, bs, world, rank, even, drop)
                    assert len(s) == len(list(s)), (length, bs, world, rank, even, drop)


def _noisy_loader(acc: Accelerator) -> Any:
    class Noisy(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(())  # drawn in a DataLoader worker

    return acc.prepare(DataLoader(Noisy(), batch_size=2, num_workers=2))


def test_defect_4_an_epoch_after_resume_repeats_the_worker_random_streams(tmp_path: Path) -> None:
    acc = _accelerator(seed=SEED, project_dir=tmp_path)
    loader = _noisy_loader(acc)
    epoch0 = [b.tolist() for b in loader]
    path = acc.save_state()  # at the epoch boundary
    epoch1 = [b.tolist() for b in loader]
    assert epoch0 != epoch1
    resumed = _accelerator(seed=SEED, project_dir=tmp_path)
    loader = _noisy_loader(resumed)
    resumed.load_state(path)
    assert [b.tolist() for b in loader] == epoch1  # it replayed epoch 0's streams


def test_next_until_stop_iteration_then_iter_runs_the_next_epoch() -> None:
    loader = _shuffled(_accelerator(seed=SEED))
    it = iter(loader)
    first = [next(it)[0].tolist() for _ in range(len(loader))]
    with pytest.raises(StopIteration):
        next(it)
    assert loader.state_dict() == {"epoch": 1, "batches_consumed": 0} and len(loader) == 12
    assert (first, _ids(loader)) == (_reference_epoch(1, 0, 0), _reference_epoch(1, 0, 1))


def test_an_older_iterator_no_longer_moves_the_position() -> None:
    loader = _shuffled(_accelerator(seed=SEED))
    old = iter(loader)
    next(old)
    new = iter(loader)  # epoch 1
    next(new), next(old), next(old)
    assert loader.state_dict() == {"epoch": 1, "batches_consumed": 1}


def test_skip_first_batches_after_load_state_starts_at_that_batch_of_the_epoch_never_twice(tmp_path: Path) -> None:
    path, epoch0 = _saved_mid_epoch(tmp_path, consumed=5)
    for skip in (5, 3, 8):
        acc = _accelerator(seed=SEED, project_dir=tmp_path)
        loader = _shuffled(acc)
        acc.load_state(path)
        skipped = acc.skip_first_batches(loader, skip)
        assert skipped.prepared is loader and skipped.state is loader.state
        assert len(skipped) == loader.batches_left == 12 - skip and len(loader) == 12
        assert _ids(skipped) == epoch0[skip:]  # counted from the epoch's start, not from the restored batch
        assert len(loader) == 12 and _ids(loader) == _reference_epoch(1, 0, 1)  # used once


def test_skip_first_batches_on_a_running_loader_skips_in_its_next_epoch() -> None:
    loader = _shuffled(_accelerator(seed=SEED))
    for _ in loader:
        break
    skip_first_batches(loader, 10)
    assert _ids(loader) == _reference_epoch(1, 0, 1)[10:]
    with pytest.raises(EmberConfigError, match=r"num_batches=13\).*12 batches.*batches_per_epoch"):
        skip_first_batches(loader, 13)
    for bad in (-1, 1.5, True):
        with pytest.raises(EmberConfigError, match=r"skip_first_batches\(num_batches="):
            skip_first_batches(loader, bad)  # type: ignore[arg-type]
    with pytest.raises(EmberConfigError, match="pass a torch DataLoader"):
        skip_first_batches([1, 2, 3], 1)
    with pytest.raises(EmberConfigError, match=r"seek\(batch=-2\): expected an int >= 0"):
        loader.seek(1, -2)


class _Count(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter(range(10))


def test_skip_first_batches_on_an_unprepared_dataloader() -> None:
    mapped = DataLoader(torch.arange(10), batch_size=3)
    skipped = skip_first_batches(mapped, 2)
    assert (len(skipped), [b.tolist() for b in skipped]) == (2, [[6, 7, 8], [9]])
    unbatched = skip_first_batches(DataLoader(torch.arange(4), batch_size=None), 3)
    assert [int(v) for v in unbatched] == [3]
    streamed = skip_first_batches(DataLoader(_Count(), batch_size=4), 1)
    assert [b.tolist() for b in streamed] == [[4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in mapped] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # the original is unchanged


# ----------------------------------------------------------------------------------------------------------
# which IterableDatasets split themselves, and what the printed note says
# ----------------------------------------------------------------------------------------------------------
class _HubLike(IterableDataset):  # type: ignore[type-arg]
    """The shape ember recognises as a Hugging Face datasets.IterableDataset: its module and n_shards."""

    n_shards = 4

    def __init__(self, distributed: Any = None) -> None:
        self._distributed = distributed

    def __iter__(self) -> Any:
        info = torch.utils.data.get_worker_info()
        return iter(range(info.id if info else 0, 16, info.num_workers if info else 1))


_HubLike.__module__ = "datasets.iterable_dataset"


class _Declared(IterableDataset):  # type: ignore[type-arg]
    def __init__(self, sharded_by: Any) -> None:
        self.sharded_by = sharded_by

    def __iter__(self) -> Any:
        return iter(range(16))


def test_splits_itself_rule() -> None:
    assert splits_itself(_Count()) == frozenset()
    assert splits_itself(_Declared(("worker",))) == {"worker"}
    assert splits_itself(_Declared("rank")) == {"rank"}
    assert splits_itself(_Declared(())) == frozenset()  # explicit: ember splits it by both
    assert splits_itself(_HubLike()) == {"worker"}
    assert splits_itself(_HubLike(distributed=object())) == {"rank", "worker"}  # after split_dataset_by_node
    with pytest.raises(EmberConfigError, match=r'sharded_by item=\'workers\'.*Did you mean "worker"'):
        splits_itself(_Declared(("workers",)))


@pytest.mark.parametrize(("dataset", "note", "items"), [
    (_Count(), "IterableDataset sharded by worker into 2 interleaved shards", list(range(10))),
    (_HubLike(), "IterableDataset not sharded: it splits itself across workers", list(range(16))),
    (_Declared(("rank",)), "IterableDataset sharded by worker into 2 interleaved shards (it splits itself across "
                           "ranks)", list(range(16))),
])
def test_the_printed_note_says_how_an_iterable_dataset_was_sharded(
    dataset: Any, note: str, items: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    acc = Accelerator(cpu=True, process=ProcessInfo(), verbose=True)
    loader = acc.prepare(DataLoader(dataset, batch_size=None, num_workers=2))
    assert note in capsys.readouterr().out
    assert sorted(int(v) for v in loader) == items  # every item once


def test_iterable_shard_len_counts_the_items_of_this_process() -> None:
    shard = IterableShard(list(range(23)), rank=1, world_size=2, num_workers=2)
    assert len(shard) == 20 // 4 * 2  # 5 complete groups of 4, one item per (rank, worker) in each
    assert len(IterableShard(list(range(23)), rank=1, world_size=2, split_workers=False)) == 11
    with pytest.raises(TypeError):
        len(IterableShard(_Count(), rank=0, world_size=2))
