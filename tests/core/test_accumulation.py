"""Must-show 2 in one process: window mechanics, the partial last window, num_items weighting, clipping."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ember import Accelerator, EmberConfigError, ProcessInfo


def _accelerator(**kwargs: Any) -> Accelerator:
    return Accelerator(cpu=True, process=ProcessInfo(), verbose=False, **kwargs)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _reference_grads(common: Any, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model = common.make_model()
    F.mse_loss(model(x), y).backward()
    return _grads(model)


def test_k_micro_batches_equal_one_k_times_larger_batch(common: Any, tools: Any) -> None:
    acc = _accelerator(gradient_accumulation_steps=4)
    model = common.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    model, opt = acc.prepare(model, opt)
    x, y = common.make_data(16)
    for i in range(4):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x[4 * i : 4 * i + 4]), y[4 * i : 4 * i + 4]))
            opt.step()
            opt.zero_grad()
    assert acc.step == 1
    tools.assert_params_close(model.state_dict(), common.reference_params(world=1, accum=1, n_items=16, batch=16))


def test_inside_a_window_step_zero_grad_and_clipping_are_no_ops(common: Any) -> None:
    acc = _accelerator(gradient_accumulation_steps=3)
    model = common.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    model, opt = acc.prepare(model, opt)
    x, y = common.make_data(6)
    initial = [p.detach().clone() for p in model.parameters()]
    for i in range(2):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x[2 * i : 2 * i + 2]), y[2 * i : 2 * i + 2]))
            assert acc.sync_gradients is False
            grads = _grads(model)
            opt.step()
            assert acc.clip_grad_norm_(model.parameters(), max_norm=1e-6) is None
            acc.clip_grad_value_(model.parameters(), clip_value=1e-6)
            opt.zero_grad()
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads)), "grads were touched"
            assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial)), "params moved"
    with acc.accumulate(model):
        acc.backward(F.mse_loss(model(x[4:6]), y[4:6]))
        assert acc.sync_gradients is True
        # the window's gradient is the mean over its 3 micro-batches = the gradient of the 6 items together
        norm = acc.clip_grad_norm_(model.parameters(), max_norm=1e9)
        want = _reference_grads(common, x, y)
        for p, g in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad, g)
        assert isinstance(norm, torch.Tensor)
        torch.testing.assert_close(norm, torch.linalg.vector_norm(torch.stack([g.norm() for g in want])))
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial))
    assert acc.step == 1


def test_partial_last_window_of_an_epoch_steps_with_the_mean_of_its_micro_batches(common: Any) -> None:
    """5 batches, K=2: windows (0,1), (2,3), (4). The last window has one micro-batch; its gradient is that
    batch's gradient (not halved), and it steps at the end of the epoch, before the next epoch starts."""
    acc = _accelerator(gradient_accumulation_steps=2)
    model = common.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    x, y = common.make_data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    model, opt, loader = acc.prepare(model, opt, loader)
    syncs, steps_after = [], []
    for i, (xb, yb) in enumerate(loader):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(xb), yb))
            syncs.append(acc.sync_gradients)
            if i == 4:
                reference = common.make_model()
                reference.load_state_dict(model.state_dict())
                want = _reference_grads_of(reference, xb, yb)
                acc.clip_grad_norm_(model.parameters(), max_norm=1e9)  # applies the K/n rescale now
                for p, g in zip(model.parameters(), want):
                    torch.testing.assert_close(p.grad, g)
            opt.step()
            opt.zero_grad()
        steps_after.append(acc.step)
    assert syncs == [False, True, False, True, True]
    assert steps_after == [0, 1, 1, 2, 3]


def _reference_grads_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    F.mse_loss(model(x), y).backward()
    return _grads(model)


@pytest.mark.parametrize("inside_block", [True, False])
def test_num_items_weights_micro_batches_of_different_sizes_per_item(inside_block: bool, common: Any) -> None:
    """Micro-batches of 3 and 5 items, each loss a mean over its items: with num_items the step's gradient is
    the mean over all 8 items (what an LM wants for tokens); the default "mean" rule would weight them 1:1.
    The optimizer may step inside the last ``accumulate`` block or right after it: same gradient."""
    x, y = common.make_data(8)
    want = _reference_grads(common, x, y)

    def window_grads(use_num_items: bool) -> list[torch.Tensor]:
        acc = _accelerator(gradient_accumulation_steps=2)
        model = common.make_model()
        opt = torch.optim.SGD(model.parameters(), lr=common.LR)
        model, opt = acc.prepare(model, opt)
        for sl in (slice(0, 3), slice(3, 8)):
            with acc.accumulate(model):
                loss = F.mse_loss(model(x[sl]), y[sl])
                acc.backward(loss, num_items=(sl.stop - sl.start) if use_num_items else None)
                if inside_block and acc.sync_gradients:
                    acc.unscale_gradients()  # what optimizer.step() / clip_grad_norm_ do first
        if not inside_block:
            acc.unscale_gradients()
        return _grads(model)

    for got, w in zip(window_grads(use_num_items=True), want):
        torch.testing.assert_close(got, w)
    assert any(not torch.allclose(got, w) for got, w in zip(window_grads(use_num_items=False), want))


def test_num_items_without_accumulate_counts_each_step_afresh(common: Any) -> None:
    """gradient_accumulation_steps=1 and no accumulate(): every step divides by its own item count only."""
    acc = _accelerator()
    model = common.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    model, opt = acc.prepare(model, opt)
    reference = common.make_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=common.LR)
    x, y = common.make_data(9)
    for sl in (slice(0, 2), slice(2, 5), slice(5, 9)):
        acc.backward(F.mse_loss(model(x[sl]), y[sl]), num_items=sl.stop - sl.start)
        opt.step()
        opt.zero_grad()
        F.mse_loss(reference(x[sl]), y[sl]).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for p, r in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, r)


def test_partial_window_steps_correctly_when_the_optimizer_steps_after_the_block(common: Any, tools: Any) -> None:
    """K=3 over 4 batches of 2 (windows 3, 1) with ``optimizer.step()`` written after ``accumulate``."""
    acc = _accelerator(gradient_accumulation_steps=3)
    model = common.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    x, y = common.make_data(8)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    model, opt, loader = acc.prepare(model, opt, loader)
    for xb, yb in loader:
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
    assert acc.step == 2
    # steps on items [0, 6) and [6, 8): both are means, as with one process and a batch of 6 then 2
    ref = common.make_model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=common.LR)
    for sl in (slice(0, 6), slice(6, 8)):
        F.mse_loss(ref(x[sl]), y[sl]).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    tools.assert_params_close(model.state_dict(), ref.state_dict())


def test_sum_reduction_never_rescales(common: Any) -> None:
    acc = _accelerator(gradient_accumulation_steps=2, accumulation_reduction="sum")
    model = common.make_model()
    model = acc.prepare(model)
    x, y = common.make_data(4)
    for sl in (slice(0, 2), slice(2, 4)):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x[sl]), y[sl]))
    per_batch = [_reference_grads(common, x[sl], y[sl]) for sl in (slice(0, 2), slice(2, 4))]
    for p, g0, g1 in zip(model.parameters(), *per_batch):
        torch.testing.assert_close(p.grad, g0 + g1)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "4"])
def test_bad_gradient_accumulation_steps(bad: Any) -> None:
    with pytest.raises(EmberConfigError, match=r"gradient_accumulation_steps=.* must be an integer >= 1"):
        _accelerator(gradient_accumulation_steps=bad)
