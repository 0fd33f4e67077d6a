"""Trainer tests: one CPU thread, a scratch working directory, and ``trainer_helpers`` importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import trainer_helpers (importlib mode has no rootdir path)


@pytest.fixture(autouse=True)
def _quiet_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread (two shared cores), and a scratch working directory for anything written to ./runs."""
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
