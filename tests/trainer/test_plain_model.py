"""A plain nn.Module (a Hugging Face GPT-2 built from a config, no subclass) trained through ember.Module.wrap."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from trainer_helpers import loader, quiet_trainer

import ember as L
from ember import EmberConfigError

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 32, 12


def tokens(n: int, seed: int) -> DataLoader[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    ids = (start + torch.arange(SEQ)) % VOCAB  # count upwards: easy to learn
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    return DataLoader(rows, batch_size=8)  # type: ignore[arg-type]


def tiny_gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2)
    return transformers.AutoModelForCausalLM.from_config(config)


def test_hugging_face_model_without_a_subclass(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_gpt2()
    module = L.Module.wrap(
        model,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + 0.01 * step)),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    (before,) = trainer.validate(module, tokens(16, seed=1), verbose=False)
    trainer.fit(module, tokens(48, seed=0), tokens(16, seed=1))
    assert {"train_loss", "val_loss"} <= set(trainer.callback_metrics)
    assert set(trainer.progress_bar_metrics) >= {"train_loss", "val_loss"}
    (after,) = trainer.validate(module, tokens(16, seed=1), verbose=False)
    assert after["val_loss"] < 0.7 * before["val_loss"]
    assert set(trainer.callback_metrics) == {"val_loss"}  # each entry point starts afresh, as in Lightning
    assert trainer.global_step == 24
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.get_last_lr()[0] == pytest.approx(1e-2 / 1.24)
    outputs = trainer.predict(module, tokens(8, seed=2))
    assert outputs is not None and outputs[0].logits.shape == (8, SEQ, VOCAB)
    assert module.model is model  # the user's object, trained in place


def test_wrap_accepts_an_optimizer_object_and_a_loss_returning_forward(tmp_path: Path) -> None:
    class Returns(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.lin(x), y)

    net = Returns()
    module = L.Module.wrap(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, loader(n=16))
    assert trainer.global_step == 8 and "train_loss" in trainer.callback_metrics


def test_plain_module_given_to_fit_points_at_wrap(tmp_path: Path) -> None:
    with pytest.raises(EmberConfigError, match=r"plain torch.nn.Module \(Linear\).*ember.Module.wrap"):
        quiet_trainer(tmp_path).fit(torch.nn.Linear(2, 1), loader())  # type: ignore[arg-type]

    class NoLoss(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x

    module = L.Module.wrap(NoLoss(), optimizer=lambda p: torch.optim.SGD(p, 0.1))
    with pytest.raises(EmberConfigError, match=r"returned a tensor of shape \(2, 4\), not a loss"):
        module.compute_loss((torch.ones(2, 4), torch.ones(2, 1)))


class _Classifier(torch.nn.Module):
    """HF-style: forward(features, labels=None) -> {"loss", "logits"}."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(features.float())
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def _rows(n: int, seed: int) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return [{"features": row.tolist(), "label": int(row[0] > 0), "note": "unused text"} for row in x]


def test_datasets_go_straight_to_fit_validate_and_predict_as_with_the_hf_trainer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = L.Module.wrap(_Classifier(), optimizer=lambda p: torch.optim.SGD(p, lr=0.5), batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=5)
    (before,) = trainer.validate(module, _rows(16, seed=1), verbose=False)  # `label` becomes `labels`
    trainer.fit(module, _rows(32, seed=0), _rows(16, seed=1))  # a list of dicts, `note` dropped
    assert trainer.global_step == 40  # 32 rows / batch_size 4 × 5 epochs
    (after,) = trainer.validate(module, _rows(16, seed=1), verbose=False)
    assert after["val_loss"] < 0.6 * before["val_loss"]
    eval_rows = _rows(8, seed=2)
    outputs = trainer.predict(module, eval_rows)
    assert [o["logits"].shape[0] for o in outputs] == [4, 4]  # in order, batch_size rows each
    expected = module.model(torch.tensor([r["features"] for r in eval_rows]))["logits"]
    assert torch.allclose(torch.cat([o["logits"] for o in outputs]), expected, atol=1e-6)


def test_a_datasets_dataset_of_token_rows_trains_a_causal_lm(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(48):
        n = int(torch.randint(4, SEQ + 1, (1,), generator=g))
        start = int(torch.randint(0, VOCAB, (1,), generator=g))
        rows.append({"input_ids": [(start + i) % VOCAB for i in range(n)], "text": "x"})
    dataset = datasets.Dataset.from_list(rows)  # ragged rows and a text column, no labels
    torch.manual_seed(0)
    module = L.Module.wrap(tiny_gpt2(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), batch_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    (before,) = trainer.validate(module, dataset, verbose=False)
    trainer.fit(module, dataset)
    (after,) = trainer.validate(module, dataset, verbose=False)
    assert trainer.global_step == 24 and after["val_loss"] < 0.7 * before["val_loss"]


def test_a_dataset_for_a_module_without_wrap_says_how_to_load_it(tmp_path: Path) -> None:
    class Net(L.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
            return self.lin(torch.ones(1, 4)).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(EmberConfigError, match=r"train_dataloaders got a dataset \(list\).*DataLoader\(dataset.*"
                                               r"Module.wrap\(model, optimizer=..., batch_size=8\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Net(), _rows(8, seed=0))
    with pytest.raises(EmberConfigError, match=r"Module.wrap\(batch_size=0\): expected an int >= 1"):
        L.Module.wrap(_Classifier(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), batch_size=0)
