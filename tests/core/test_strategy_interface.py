"""The Strategy interface: a new strategy is one file plus one registration line, and trains through both layers.

``_strategies/allreduce_strategy.py`` is written as a user would write one (no edit to ember); the worker trains
the same model with it through ``ember.Trainer`` and ``ember.Accelerator`` on 2 gloo processes, and the test
compares with DDP.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ember import Accelerator, ProcessInfo
from ember.strategies import Strategy, strategy_names

WORKERS = Path(__file__).parent / "_workers"
STRATEGIES = Path(__file__).parent / "_strategies"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tools: Any) -> dict[str, list[dict[str, torch.Tensor]]]:
    out: dict[str, list[dict[str, torch.Tensor]]] = {}
    for name in ("allreduce_test", "ddp"):
        where = tmp_path_factory.mktemp(name)
        tools.run([*tools.EMBER, "launch", "--cpu", "--num_processes", "2", WORKERS / "strategy_worker.py", where,
                   name], timeout=240)
        out[name] = [torch.load(where / f"rank{r}.pt") for r in (0, 1)]
    return out


def test_a_registered_strategy_trains_through_both_layers_like_ddp(runs: dict[str, Any], tools: Any) -> None:
    mine, ddp = runs["allreduce_test"], runs["ddp"]
    assert mine[0].keys() == ddp[0].keys() and any(k.startswith("trainer.") for k in mine[0])
    for k in mine[0]:
        assert torch.equal(mine[0][k], mine[1][k]), f"{k} differs between ranks"
        torch.testing.assert_close(mine[0][k], ddp[0][k], rtol=1e-5, atol=1e-6, msg=k)
    # and both layers agree with each other (same data order, same accumulation rule)
    for k in [k for k in mine[0] if k.startswith("acc.")]:
        torch.testing.assert_close(mine[0][k], mine[0]["trainer." + k[4:]], rtol=1e-5, atol=1e-6, msg=k)


def test_registration_is_one_line_and_every_name_list_reads_it() -> None:
    sys.path.insert(0, str(STRATEGIES))
    try:
        import allreduce_strategy
    finally:
        sys.path.remove(str(STRATEGIES))
    text = Path(allreduce_strategy.__file__).read_text()
    assert text.count("register_strategy(") == 1
    assert "allreduce_test" in strategy_names()
    import ember as L
    from ember.trainer._config import check_strategy

    assert check_strategy("allreduce_test") == "allreduce_test"  # the Trainer accepts it
    acc = Accelerator(cpu=True, strategy="allreduce_test", process=ProcessInfo(), verbose=False)
    assert isinstance(acc.strategy, allreduce_strategy.AllReduceStrategy) and isinstance(acc.strategy, Strategy)
    with pytest.raises(L.EmberConfigError, match='Did you mean "allreduce_test"'):
        Accelerator(cpu=True, strategy="allreduce_tset", process=ProcessInfo())
