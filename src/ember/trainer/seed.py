"""``seed_everything``: Lightning's seeding function, for ported scripts (``L.seed_everything(42, workers=True)``).

It seeds Python, NumPy and torch (CPU and every CUDA device) through :func:`ember.set_seed` and records the seed
the way Lightning does, in the environment variables ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS`` (so processes
started later, such as the workers of ``Trainer(devices=N)``, see the same seed, and code that reads those
variables keeps working).

``workers=True``: the Trainer gives every DataLoader with ``num_workers > 0`` and no ``worker_init_fn`` of its own
:func:`seed_worker`, which seeds NumPy and Python's ``random`` in each worker from the seed torch already gives
that worker (torch seeds only itself: without this, every worker starts from the same NumPy state and random
augmentations repeat across workers).
"""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from ember._errors import EmberConfigError
from ember._log import info as _log_info

__all__ = ["seed_everything", "seed_worker", "workers_seeded"]

MAX_SEED = 2**32 - 1  # NumPy's limit
_SEED_VAR, _WORKERS_VAR = "PL_GLOBAL_SEED", "PL_SEED_WORKERS"  # Lightning's names, read by ported code


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed every RNG a run touches and return the seed.

    ``seed=None`` takes the seed recorded by an earlier call (``PL_GLOBAL_SEED``), else 0 with a warning.

    >>> import torch, ember as L
    >>> L.seed_everything(42, verbose=False)  # Lightning scripts write L.seed_everything(42, workers=True)
    42
    >>> first = torch.rand(2)
    >>> _ = L.seed_everything(42, verbose=False)
    >>> torch.equal(first, torch.rand(2))
    True
    """
    if seed is None:
        recorded = os.environ.get(_SEED_VAR)
        if recorded is None:
            seed = 0
            if verbose:
                warnings.warn("seed_everything(): no seed given or recorded; using 0.", stacklevel=2)
        else:
            try:
                seed = int(recorded)
            except ValueError:
                raise EmberConfigError(f"seed_everything(): {_SEED_VAR}={recorded!r} is not an integer.") from None
    elif isinstance(seed, bool) or not isinstance(seed, int):
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise EmberConfigError(f"seed_everything(seed={seed!r}): the seed must be an integer.") from None
    if not 0 <= seed <= MAX_SEED:
        raise EmberConfigError(f"seed_everything(seed={seed}): the seed must be in [0, {MAX_SEED}] (NumPy's range).")
    from ember._seed import set_seed

    set_seed(seed)
    os.environ[_SEED_VAR] = str(seed)
    os.environ[_WORKERS_VAR] = str(int(bool(workers)))
    if verbose:
        from ember._env import ProcessInfo

        if ProcessInfo.from_env(os.environ).rank == 0:
            _log_info(f"seed set to {seed}")
    return seed


def workers_seeded() -> bool:
    """Whether ``seed_everything(..., workers=True)`` was called (in this process or the one that started it)."""
    return os.environ.get(_WORKERS_VAR) == "1"


def seed_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: NumPy and ``random`` seeded from the seed torch gave this worker.

    torch gives worker k of an iterator the seed ``base + k`` (``base`` drawn from the loader's generator), so the
    streams differ per worker, per epoch and, with ember's per-rank loaders, per rank.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
