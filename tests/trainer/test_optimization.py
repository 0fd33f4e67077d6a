"""configure_optimizers return forms, scheduler intervals/frequency/ReduceLROnPlateau, gradient clipping and
manual optimisation with two optimizers (a small GAN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from ember import EmberConfigError
from ember.callbacks import Callback

LR = 0.1


def step_lr(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


FORMS: dict[str, Any] = {
    "optimizer": lambda p: torch.optim.SGD(p, lr=LR),
    "list": lambda p: [torch.optim.SGD(p, lr=LR)],
    "tuple of lists": lambda p: (lambda o: ([o], [step_lr(o)]))(torch.optim.SGD(p, lr=LR)),
    "dict": lambda p: (lambda o: {"optimizer": o, "lr_scheduler": step_lr(o)})(torch.optim.SGD(p, lr=LR)),
    "dict step interval": lambda p: (lambda o: {
        "optimizer": o, "lr_scheduler": {"scheduler": step_lr(o), "interval": "step", "frequency": 2}})(
        torch.optim.SGD(p, lr=LR)),
    "list of dicts": lambda p: [(lambda o: {"optimizer": o, "lr_scheduler": {"scheduler": step_lr(o)}})(
        torch.optim.SGD(p, lr=LR))],
}
# 2 epochs of 4 batches: epoch interval → 2 scheduler steps; step interval with frequency 2 → 8 / 2 = 4 steps
EXPECTED_LR = {"optimizer": LR, "list": LR, "tuple of lists": LR / 4, "dict": LR / 4,
               "dict step interval": LR / 16, "list of dicts": LR / 4}


@pytest.mark.parametrize("form", list(FORMS))
def test_configure_optimizers_return_forms(tmp_path: Path, form: str) -> None:
    class Forms(Regressor):
        def configure_optimizers(self) -> Any:
            return FORMS[form](self.parameters())

    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Forms(), loader(n=16))
    assert len(trainer.optimizers) == 1 and trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(EXPECTED_LR[form])


def test_reduce_lr_on_plateau_reads_the_monitored_metric(tmp_path: Path) -> None:
    class Plateau(Regressor):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_flat", torch.tensor(1.0))  # never improves

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=LR)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": sched, "monitor": "val_flat"}

    trainer = quiet_trainer(tmp_path, max_epochs=3)
    trainer.fit(Plateau(), loader(n=8), loader(n=4, seed=1))
    assert trainer.lr_scheduler_configs[0].reduce_on_plateau
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR / 4)  # epochs 2 and 3 did not improve

    class Unlogged(Plateau):
        def configure_optimizers(self) -> Any:
            config = super().configure_optimizers()
            config["monitor"] = "val_los"
            return config

    with pytest.raises(EmberConfigError, match=r"ReduceLROnPlateau monitors 'val_los'.*'val_flat'"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Unlogged(), loader(n=8), loader(n=4, seed=1))


def test_gradient_clipping_by_norm_and_value(tmp_path: Path) -> None:
    norms: list[float] = []
    grads: list[float] = []

    class Probe(Callback):
        def on_before_zero_grad(self, trainer: Any, module: Any, optimizer: Any) -> None:
            g = [p.grad for p in module.parameters()]
            norms.append(float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in g]))))
            grads.append(float(max(x.abs().max() for x in g)))

    class Big(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return 1000 * self.loss(batch)

    quiet_trainer(tmp_path, max_epochs=1, gradient_clip_val=0.5, callbacks=[Probe()]).fit(Big(), loader())
    assert norms and all(n == pytest.approx(0.5, rel=1e-4) for n in norms)
    grads.clear()
    quiet_trainer(tmp_path, max_epochs=1, gradient_clip_val=0.01, gradient_clip_algorithm="value",
                  callbacks=[Probe()]).fit(Big(), loader())
    assert grads and all(g <= 0.01 + 1e-9 for g in grads)


class GAN(Regressor):
    """Manual optimisation with a generator and a discriminator, each with its own optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        noise = torch.randn(real.shape[0], 2)

        self.toggle_optimizer(opt_d)
        fake = self.generator(noise).detach()
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        d_gen = self.discriminator(self.generator(noise))
        g_loss = bce(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)
        assert self.lr_schedulers() is self.trainer.lr_scheduler_configs[0].scheduler

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=1e-2)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=1e-2)
        return [opt_g, opt_d], [step_lr(opt_g)]


def test_manual_optimisation_with_two_optimizers(tmp_path: Path) -> None:
    seen: list[str] = []

    class Hooks(Callback):
        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            owner = "g" if optimizer.param_groups[0]["params"][0] is module.generator[0].weight else "d"
            seen.append(owner)

        def on_before_backward(self, trainer: Any, module: Any, loss: torch.Tensor) -> None:
            seen.append("backward")

    gan = GAN()
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Hooks()])
    trainer.fit(gan, loader(n=12, batch_size=4))
    assert trainer.global_step == 6  # both optimizers step on each of the 3 batches
    assert seen == ["backward", "d", "backward", "g"] * 3
    for prefix in ("generator", "discriminator"):
        assert any(not torch.equal(v, before[k]) for k, v in gan.state_dict().items() if k.startswith(prefix))
    assert {"d_loss", "g_loss"} <= set(trainer.callback_metrics)
    assert all(p.requires_grad for p in gan.parameters())  # untoggle restored everything
    # manual optimisation does not step schedulers for you
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == [1e-2]


def test_manual_optimisation_rejects_trainer_clipping_and_accumulation(tmp_path: Path) -> None:
    with pytest.raises(EmberConfigError, match=r"gradient_clip_val=1\.0 with manual optimisation.*self\.clip_gradients"):
        quiet_trainer(tmp_path, gradient_clip_val=1.0).fit(GAN(), loader())
    with pytest.raises(EmberConfigError, match="accumulate_grad_batches=2 with manual optimisation"):
        quiet_trainer(tmp_path, accumulate_grad_batches=2).fit(GAN(), loader())


def test_two_optimizers_need_manual_optimisation(tmp_path: Path) -> None:
    class Two(Regressor):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(EmberConfigError, match="returned 2 optimizers; automatic optimisation steps one"):
        quiet_trainer(tmp_path).fit(Two(), loader())


def test_bad_configure_optimizers_results(tmp_path: Path) -> None:
    class Nothing(Regressor):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(EmberConfigError, match="configure_optimizers returned NoneType"):
        quiet_trainer(tmp_path).fit(Nothing(), loader())

    class Typo(Regressor):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": step_lr(opt), "intervall": "step"}}

    with pytest.raises(EmberConfigError, match=r"unknown key 'intervall'\. Did you mean \"interval\""):
        quiet_trainer(tmp_path).fit(Typo(), loader())
