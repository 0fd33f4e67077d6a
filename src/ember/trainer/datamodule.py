"""``ember.DataModule`` (alias ``LightningDataModule``): the data half of a Lightning project.

A DataModule gathers the dataloaders and the data preparation of a task; the Trainer calls its hooks::

    prepare_data()        once per machine (local rank 0), before the others continue: downloads, tokenising
    setup(stage)          on every process: "fit", "validate", "test" or "predict" (build datasets, splits)
    train_dataloader() / val_dataloader() / test_dataloader() / predict_dataloader()
    teardown(stage)       on every process, after the stage

``trainer.fit(model, datamodule=dm)`` (or ``trainer.fit(model, dm)``). ``save_hyperparameters()`` works as on a
Module and the hyperparameters are logged with the model's. ``state_dict()`` / ``load_state_dict()`` are saved in
Trainer checkpoints (plain data and tensors).

>>> import torch, ember as L
>>> from torch.utils.data import DataLoader, TensorDataset
>>> class Squares(L.LightningDataModule):
...     def __init__(self, batch_size=4):
...         super().__init__()
...         self.save_hyperparameters()
...     def setup(self, stage):
...         x = torch.arange(8.0).unsqueeze(1)
...         self.data = TensorDataset(x, x ** 2)
...     def train_dataloader(self):
...         return DataLoader(self.data, batch_size=self.hparams.batch_size)
>>> dm = Squares(batch_size=2)
>>> dm.setup("fit"); len(dm.train_dataloader()), dm.hparams
(4, {'batch_size': 2})
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from ember.trainer._hparams import AttributeDict, hparams_from_call

if TYPE_CHECKING:
    from ember.trainer.trainer import Trainer

__all__ = ["DataModule", "LightningDataModule"]


class DataModule:
    """Dataloaders and data preparation of a task, with Lightning's hooks; override the ones you need.

    The ``*_dataloader`` methods are not defined on the base class: a DataModule without ``val_dataloader``
    simply has no validation data.
    """

    #: Lightning's flag: ``prepare_data`` runs once per machine (True) or once per job (False)
    prepare_data_per_node: bool = True

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self._hparams = AttributeDict()
        self._log_hyperparams = True

    @property
    def hparams(self) -> AttributeDict:
        """What :meth:`save_hyperparameters` recorded."""
        found: AttributeDict = self.__dict__.setdefault("_hparams", AttributeDict())  # also without super().__init__()
        return found

    def save_hyperparameters(
        self, *args: Any, ignore: str | Iterable[str] | None = None, frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Record the arguments of the calling ``__init__`` in ``self.hparams`` (see ``Module.save_hyperparameters``).

        >>> import ember as L
        >>> class Data(L.DataModule):
        ...     def __init__(self, batch_size=32, root="data"):
        ...         super().__init__()
        ...         self.save_hyperparameters("batch_size")
        >>> Data(batch_size=8).hparams.batch_size
        8
        """
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        self.hparams.update(hparams_from_call(self, args, ignore, frame))
        self._log_hyperparams = logger

    def prepare_data(self) -> None:
        """Download / write data to disk; runs on one process per machine before ``setup``."""

    def setup(self, stage: str) -> None:
        """Build the datasets for ``stage`` ("fit", "validate", "test" or "predict"); runs on every process."""

    def teardown(self, stage: str) -> None:
        """Release what ``setup`` built."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in Trainer checkpoints (plain data and tensors); empty by default."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called on ``fit(ckpt_path=...)``)."""

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        val_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        test_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        predict_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **loader_kwargs: Any,
    ) -> DataModule:
        """A DataModule whose dataloaders wrap the given datasets (training data shuffled, as Lightning).

        >>> import torch, ember as L
        >>> dm = L.DataModule.from_datasets(torch.arange(10.0), batch_size=5)
        >>> len(dm.train_dataloader()), dm.val_dataloader() is None
        (2, True)
        """
        module = cls()

        def loaders(datasets: Any, shuffle: bool) -> Any:
            if datasets is None:
                return None
            many = isinstance(datasets, Sequence) and not isinstance(datasets, Dataset)
            made = [DataLoader(d, batch_size=batch_size, num_workers=num_workers,
                               shuffle=shuffle and not isinstance(d, IterableDataset), **loader_kwargs)
                    for d in (datasets if many else [datasets])]
            return made if many else made[0]

        for name, data, shuffle in (("train_dataloader", train_dataset, True), ("val_dataloader", val_dataset, False),
                                    ("test_dataloader", test_dataset, False),
                                    ("predict_dataloader", predict_dataset, False)):
            setattr(module, name, (lambda d=data, s=shuffle: loaders(d, s)))
        return module

    def __repr__(self) -> str:
        hparams = f"({dict(self.hparams)})" if self.hparams else "()"
        return f"{type(self).__name__}{hparams}"


LightningDataModule = DataModule
"""Alias of :class:`DataModule`, so ported Lightning code runs with ``import ember as L``."""
