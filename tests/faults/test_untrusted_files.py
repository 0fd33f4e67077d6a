"""Must-show 7: checkpoint files are data, never code. A pickle payload is refused by Accelerator.load_state
(and never runs); a flipped byte or a truncated file is reported by name. Also: world-size changes on resume."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from ember import Accelerator
from ember import checkpoint as ckpt


class Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def make_checkpoint(root: Path) -> tuple[Accelerator, Any, Path]:
    acc = Accelerator(cpu=True, seed=0, project_dir=root, verbose=False)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    acc.backward(model(torch.ones(2, 4)).sum())
    optimizer.step()
    optimizer.zero_grad()
    return acc, model, acc.save_state()


def replace_file(ckpt_dir: Path, name: str, data: bytes) -> None:
    """Swap a file and fix the manifest to match: the attacker controls the whole directory."""
    (ckpt_dir / name).write_bytes(data)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors", "state-rank0.safetensors",
                                    "optimizer.json"])
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path, target: str, kind: str) -> None:
    acc, model, saved = make_checkpoint(tmp_path / "run")
    marker = tmp_path / "pwned"
    if kind == "pickle":
        data = pickle.dumps(Payload(marker), protocol=4)
    else:
        torch.save({"weight": Payload(marker)}, tmp_path / "evil.pt")
        data = (tmp_path / "evil.pt").read_bytes()
    replace_file(saved, target, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError) as err:
        acc.load_state()  # auto-resume picks it: it is complete and its manifest matches
    assert target in str(err.value)
    assert not marker.exists()
    if target == "model.safetensors":  # refused before anything was loaded
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_flipped_byte_is_reported_by_name(tmp_path: Path) -> None:
    acc, _, saved = make_checkpoint(tmp_path)
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the tensor data; same size
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors does not match its sha256"):
        acc.load_state()


def test_truncated_file_is_reported_by_name(tmp_path: Path) -> None:
    acc, _, saved = make_checkpoint(tmp_path)
    path = saved / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.safetensors has \d+ bytes but the manifest"):
        acc.load_state(saved)


# ---------------------------------------------------------------------------------------------------------
# world size changes on resume
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(fw: Any) -> ModuleType:
    spec = importlib.util.spec_from_file_location("ember_fault_worker", fw.WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepared(worker: ModuleType, root: Path, items: int = 40, batch_size: int = 4) -> tuple[Accelerator, Any, Any]:
    acc = Accelerator(cpu=True, seed=0, gradient_accumulation_steps=3, project_dir=root, verbose=False)
    model = worker.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = torch.utils.data.DataLoader(worker.dataset(items), batch_size=batch_size, shuffle=True)
    model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    acc.register_for_checkpointing(worker.LoopState())
    return acc, model, loader


@pytest.fixture(scope="module")
def two_rank_checkpoint(references: Any) -> Path:
    """Step 1 of the 2-rank reference run: 3 batches of 4 consumed per rank, mid-epoch."""
    return Path(references.dir(2)) / "checkpoints" / "step-00000001"


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path: Path, worker: ModuleType, two_rank_checkpoint: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    acc, model, loader = prepared(worker, tmp_path)
    acc.load_state(two_rank_checkpoint)
    assert loader.state_dict() == {"epoch": 0, "batches_consumed": 6}  # 24 items: 6 batches of 4 on one rank
    assert acc.step == 1
    saved = ckpt.read_tensors(two_rank_checkpoint, "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in acc.unwrap_model(model).state_dict().items())
    assert "resumed a 2-process checkpoint on 1 processes" in capsys.readouterr().out
    # the data that follows is exactly what the 2 ranks had not consumed yet: items 24.. of the epoch's order
    order = loader.sampler._global_indices()
    x, _ = next(iter(loader))
    assert torch.equal(x, worker.dataset(40).tensors[0][order[24:28]])


@pytest.mark.parametrize(("items", "batch_size", "match"), [
    (40, 5, "24 items of this epoch were consumed in rounds of 8"),
    (44, 4, "dataset of 40 items, this one has 44"),
])
def test_position_that_cannot_be_remapped_fails_before_loading(
    tmp_path: Path, worker: ModuleType, two_rank_checkpoint: Path, items: int, batch_size: int, match: str
) -> None:
    acc, model, _ = prepared(worker, tmp_path, items, batch_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match=match):
        acc.load_state(two_rank_checkpoint)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert acc.step == 0


def test_auto_resume_finds_newest_complete(tmp_path: Path) -> None:
    acc, _, first = make_checkpoint(tmp_path)
    newer = first.parent / ckpt.step_dir_name(5)
    shutil.copytree(first, first.parent / ".tmp-step-00000005")  # an unfinished save: invisible
    (newer).mkdir()  # a directory without a manifest: not a checkpoint
    assert acc.load_state() == first
