"""An FSDP checkpoint is data, never code: a pickle planted in any of its files (shards, shard indexes, the optimizer
structure) is refused naming the file and never runs; a flipped byte is reported by file name. One process: FSDP2
on a one-rank group writes the same sharded layout as on many."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ember import Accelerator, ProcessInfo
from ember import checkpoint as ckpt
from ember.strategies import FSDPStrategy

sys.path.insert(0, str(Path(__file__).parent / "_workers"))
from tiny import Block, TinyLM

sys.path.pop(0)


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def fsdp_checkpoint(root: Path) -> tuple[Accelerator, Any, Path]:
    acc = Accelerator(cpu=True, strategy=FSDPStrategy(auto_wrap_policy={Block}), project_dir=root,
                      process=ProcessInfo(), verbose=False)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    acc.backward(model(torch.randint(0, 32, (2, 9))))
    opt.step()
    opt.zero_grad()
    return acc, model, acc.save_state()


def test_an_fsdp_checkpoint_holds_shards_and_json_only(tmp_path: Path) -> None:
    acc, model, saved = fsdp_checkpoint(tmp_path)
    files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert {"model/shard-r00000.safetensors", "model/shard-r00000.json", "optimizer/shard-r00000.safetensors",
            "optimizer/structure.json", "manifest.json"} <= set(files)
    assert all(f.endswith((".json", ".safetensors")) or f == "README.md" for f in files), files
    before = {k: v.clone() for k, v in acc.get_state_dict(model).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert acc.load_state() == saved  # load right after save works (accelerate#3896)
    after = acc.get_state_dict(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("target", ["model/shard-r00000.safetensors", "model/shard-r00000.json",
                                    "optimizer/shard-r00000.safetensors", "optimizer/structure.json"])
def test_pickle_planted_in_an_fsdp_checkpoint_never_runs(tmp_path: Path, target: str) -> None:
    acc, _, saved = fsdp_checkpoint(tmp_path / "run")
    marker = tmp_path / "pwned"
    data = pickle.dumps(Payload(marker), protocol=4)
    (saved / target).write_bytes(data)  # the attacker controls the whole directory: the manifest matches
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][target] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError) as err:
        acc.load_state()
    assert target.split("/")[-1] in str(err.value)
    assert not marker.exists()


def test_flipped_byte_in_a_shard_is_reported_by_name(tmp_path: Path) -> None:
    acc, _, saved = fsdp_checkpoint(tmp_path)
    path = saved / "optimizer" / "shard-r00000.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer/shard-r00000\.safetensors does not match its sha256"):
        acc.load_state()


def test_fsdp_export_loads_with_from_pretrained_and_load_state_dict(tmp_path: Path) -> None:
    """One consolidated model.safetensors (+ config.json): transformers' from_pretrained and plain strict
    load_state_dict both read it; the full model is gathered to the CPU one tensor at a time."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    acc = Accelerator(cpu=True, strategy="fsdp", process=ProcessInfo(), verbose=False)
    model = acc.prepare(model)
    path = acc.save_model(model, tmp_path / "export")
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "model.safetensors"]
    loaded = transformers.LlamaForCausalLM.from_pretrained(path.parent)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.items())
    fresh = transformers.LlamaForCausalLM(config)
    from safetensors.torch import load_file

    fresh.load_state_dict(load_file(str(path)))  # strict


def test_configure_model_builds_on_meta_and_fsdp_materialises(tmp_path: Path) -> None:
    """Lightning's ``configure_model``: layers built inside it under FSDP start on the meta device (no full copy per
    rank) and are sharded and materialised by the strategy, then train."""
    import ember as L

    seen: list[bool] = []

    class Late(L.Module):
        def configure_model(self) -> None:
            if not hasattr(self, "net"):
                self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
                seen.append(all(p.is_meta for p in self.net.parameters()))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Late()
    trainer = L.Trainer(accelerator="cpu", strategy="fsdp", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(torch.randn(12, 4), batch_size=4))
    assert seen == [True] and trainer.global_step == 3
    weights = trainer.accelerator.get_state_dict(module)
    assert all(not v.is_meta and torch.isfinite(v).all() for v in weights.values()) and len(weights) == 4
