"""Must-show 1-4 and the launch half of 6: one worker script, run under `python`, `ember launch` and `torchrun`.

Each 2-rank run uses real processes with gloo on CPU. The module-scoped fixtures start every run once and
the tests below assert on what each rank wrote (see tests/core/_workers/core_worker.py).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory, tools: Any) -> list[Any]:
    out = tmp_path_factory.mktemp("python")
    tools.run([sys.executable, tools.WORKER, out, "full"])
    return tools.read_ranks(out, 1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, tools: Any) -> list[Any]:
    out = tmp_path_factory.mktemp("ember_launch")
    tools.run([*tools.EMBER, "launch", "--num_processes", "2", "--cpu", tools.WORKER, out, "full"], timeout=240)
    return tools.read_ranks(out, 2)


def test_plain_python_runs_single_device(one_rank: list[Any], common: Any, tools: Any) -> None:
    (info, tensors), = one_rank
    assert (info["world"], info["torch_world"], info["strategy"], info["precision"]) == (1, 1, "single", "32-true")
    assert info["ddp"]["optimizer_steps"] == 10
    tools.assert_params_close(tensors["ddp"], common.reference_params(world=1, accum=1))


def test_ddp_two_ranks_identical_and_equal_to_one_process_on_the_combined_batch(
    two_ranks: list[Any], common: Any, tools: Any
) -> None:
    (info0, t0), (info1, t1) = two_ranks
    assert [i["rank"] for i, _ in two_ranks] == [0, 1]
    assert all((i["world"], i["torch_world"], i["strategy"]) == (2, 2, "ddp") for i, _ in two_ranks)
    # 20 items, 2 per rank per step: 5 steps, each on global batches 2k (rank 0) and 2k+1 (rank 1)
    assert info0["ddp"]["optimizer_steps"] == info1["ddp"]["optimizer_steps"] == 5
    assert info0["ddp"]["local_items"] == info1["ddp"]["local_items"] == [2] * 5
    for k in t0["ddp"]:
        assert torch.equal(t0["ddp"][k], t1["ddp"][k]), f"{k} differs between ranks"
    tools.assert_params_close(t0["ddp"], common.reference_params(world=2, accum=1))
    # the comparison is sharp: a run on per-rank batches alone would land elsewhere
    assert tools.params_differ(t0["ddp"], common.reference_params(world=1, accum=1))


@pytest.mark.parametrize("world", [1, 2])
def test_accumulation_equals_one_larger_batch_with_a_partial_last_window(
    world: int, one_rank: list[Any], two_ranks: list[Any], common: Any, tools: Any
) -> None:
    """K=3 micro-batches of 2 = one batch of 3*2*world; the epoch's last window is shorter and still steps."""
    ranks = one_rank if world == 1 else two_ranks
    reference = common.reference_params(world=world, accum=3)
    expected_syncs = common.expected_sync_pattern(world=world, accum=3)
    # 1 rank: 10 micro-batches -> windows 3,3,3,1; 2 ranks: 5 per rank -> windows 3,2
    assert expected_syncs == ([False, False, True] * 3 + [True] if world == 1 else [False, False, True, False, True])
    for info, tensors in ranks:
        assert info["accum"]["syncs"] == expected_syncs
        assert info["accum"]["optimizer_steps"] == sum(expected_syncs)
        tools.assert_params_close(tensors["accum"], reference)
    assert tools.params_differ(ranks[0][1]["accum"], common.reference_params(world=world, accum=1))


def _one_sgd_step_on(common: Any, n: int) -> dict[str, torch.Tensor]:
    """Plain PyTorch: one SGD step on the mean loss over items [0, n) of make_data(10)."""
    x, y = common.make_data(10)
    model = common.make_model()
    torch.nn.functional.mse_loss(model(x[:n]), y[:n]).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= common.LR * p.grad
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_num_items_weights_every_item_of_every_rank_equally(
    one_rank: list[Any], two_ranks: list[Any], common: Any, tools: Any
) -> None:
    """2 ranks x 2 micro-batches of 1/3 and 2/4 items with num_items: one step on the mean over all 10 items."""
    (_, t0), (_, t1) = two_ranks
    for k in t0["num_items"]:
        assert torch.equal(t0["num_items"][k], t1["num_items"][k])
    tools.assert_params_close(t0["num_items"], _one_sgd_step_on(common, 10))
    # one process runs rank 0's part only (1 + 3 items): the per-item mean over x[0:4]
    tools.assert_params_close(one_rank[0][1]["num_items"], _one_sgd_step_on(common, 4))


def test_gradient_allreduce_only_on_boundary_micro_steps(two_ranks: list[Any]) -> None:
    """A real DDP comm hook (wrapping allreduce_hook) counts the bucket all-reduces of every micro-step."""
    for info, _ in two_ranks:
        calls, syncs = info["accum"]["allreduces"], info["accum"]["syncs"]
        assert syncs == [False, False, True, False, True]
        assert [c for c, s in zip(calls, syncs) if not s] == [0, 0, 0]
        assert all(c >= 1 for c, s in zip(calls, syncs) if s), calls
        assert calls[2] == calls[4]  # the same buckets on every boundary


@pytest.mark.parametrize("even", [True, False])
def test_gather_for_metrics_returns_exactly_the_dataset(even: bool, two_ranks: list[Any], one_rank: list[Any]) -> None:
    """13 items, batch 4, 2 ranks: 4 global batches; even_batches pads the last round with 3 repeats."""
    want = [10.0 * i for i in range(13)]
    for info, _ in [*two_ranks, *one_rank]:
        assert info[f"gather_even{even}"] == want  # in dataset order, no duplicates
        assert info[f"gather_even{even}_objects"] == [f"item{i}" for i in range(13)]
    local0, local1 = (info[f"gather_even{even}_local"] for info, _ in two_ranks)
    assert local0 == [0, 1, 2, 3, 8, 9, 10, 11]
    if even:
        assert local1 == [4, 5, 6, 7, 12, 0, 1, 2]  # the padding: items 0, 1, 2 again
    else:
        assert local1 == [4, 5, 6, 7, 12]


def test_gather_for_metrics_shuffled_covers_the_dataset_in_the_same_order_as_one_process(
    two_ranks: list[Any], one_rank: list[Any]
) -> None:
    (i0, _), (i1, _) = two_ranks
    (single, _), = one_rank
    assert sorted(i0["gather_shuffled"]) == [float(i) for i in range(13)]
    assert i0["gather_shuffled"] != sorted(i0["gather_shuffled"])  # really shuffled
    assert i0["gather_shuffled"] == i1["gather_shuffled"] == single["gather_shuffled"]


def test_iterable_dataset_shards_are_disjoint(two_ranks: list[Any], one_rank: list[Any]) -> None:
    (i0, _), (i1, _) = two_ranks
    assert i0["iterable_local"] == [0, 2, 4, 6, 8]
    assert i1["iterable_local"] == [1, 3, 5, 7, 9]  # item 10 has no partner for rank 0: dropped (documented)
    assert one_rank[0][0]["iterable_local"] == [float(i) for i in range(11)]


def test_scheduler_steps_once_per_optimizer_step_on_one_and_two_processes(
    one_rank: list[Any], two_ranks: list[Any]
) -> None:
    """LambdaLR(0.5**step), 2 micro-batches per step: the LR halves every other micro-batch, on any world size."""
    want = [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    for info, _ in [*one_rank, *two_ranks]:
        assert info["lrs"] == want
        assert info["scheduler_last_epoch"] == 3  # not 6 (micro-batches), not 6 (x world size)
        assert info["scheduler_optimizer_steps"] == 3


def test_torchrun_runs_the_same_script_with_the_same_results(
    tmp_path: Any, two_ranks: list[Any], tools: Any
) -> None:
    tools.run([*tools.TORCHRUN, "--standalone", "--nproc_per_node", "2", tools.WORKER, tmp_path, "full"], timeout=240)
    for (info, tensors), (ref_info, ref_tensors) in zip(tools.read_ranks(tmp_path, 2), two_ranks):
        assert info == ref_info
        for part in ("ddp", "accum", "num_items"):
            for k in ref_tensors[part]:
                assert torch.equal(tensors[part][k], ref_tensors[part][k]), (part, k)
