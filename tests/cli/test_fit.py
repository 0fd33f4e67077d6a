"""`ember fit | validate | test | predict --config`: trains from examples/bytegpt.yaml, saves and checks the resolved
config on resume, "did you mean" for flags, config keys and init args, and config values are never code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ember.cli import main

pytest.importorskip("jsonargparse", reason="ember fit needs the cli extra (jsonargparse)")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "bytegpt.yaml"


def _ember(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture
def in_examples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """In-process runs: cwd is a scratch dir, examples/ importable, sys.path restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])
    return tmp_path


def test_fit_from_the_example_config_saves_config_resumes_and_validates(tmp_path: Path) -> None:
    first = _ember(tmp_path, "fit", "--config", str(CONFIG))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    run = tmp_path / "runs" / "bytegpt-cli"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "bytegpt.ByteGPT" and saved["trainer"]["max_epochs"] == 2
    assert saved["model"]["init_args"]["n_layer"] == 2 and saved["model"]["init_args"]["dropout"] == 0.0  # defaults too
    metrics = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    val = [float(r.split(",")[header.index("val_loss")]) for r in metrics[1:] if r.split(",")[header.index("val_loss")]]
    assert len(val) == 2 and val[-1] < 4.0  # the untrained byte model is at ln(256) = 5.55
    assert (run / "csv" / "version_0" / "checkpoints" / "last" / "manifest.json").is_file()

    # --print_config shows what fit saved (plus the override)
    printed = _ember(tmp_path, "fit", "--config", str(CONFIG), "--trainer.max_epochs", "3", "--print_config")
    assert printed.returncode == 0 and yaml.safe_load(printed.stdout)["trainer"]["max_epochs"] == 3

    # a fresh fit into the same directory with a different config stops, saying how to go on
    clash = _ember(tmp_path, "fit", "--config", str(CONFIG), "--trainer.max_epochs", "3")
    assert clash.returncode == 2 and "trainer.max_epochs: 2 → 3" in clash.stderr and "--ckpt_path last" in clash.stderr

    # resuming says what differs from the saved config and trains only the new epoch
    resumed = _ember(tmp_path, "fit", "--config", str(CONFIG), "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming with a config that differs" in resumed.stdout and "trainer.max_epochs: 2 → 3" in resumed.stdout
    assert "Epoch 2" in resumed.stdout and "Epoch 1:" not in resumed.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 3
    sessions = json.loads((run / "run_info.json").read_text())["sessions"]  # for `ember report`
    assert len(sessions) == 2 and all(s["end"] > s["start"] for s in sessions)

    # validate / predict the newest checkpoint with the same config
    validated = _ember(tmp_path, "validate", "--config", str(CONFIG), "--ckpt_path", "last")
    assert validated.returncode == 0, validated.stderr[-3000:]
    line = next(x for x in validated.stdout.splitlines() if "validate results" in x)
    assert float(line.split("val_loss=")[1]) < 4.0
    predicted = _ember(tmp_path, "predict", "--config", str(CONFIG), "--ckpt_path", "last")
    assert predicted.returncode == 0 and "[ember] predict: 2 batches of predictions" in predicted.stdout


def test_misspelt_trainer_flag_gets_did_you_mean(in_examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--config", str(CONFIG), "--trainer.max_epoch", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown Trainer argument --trainer.max_epoch. Did you mean 'max_epochs'?" in err
    assert "Valid: accelerator, accumulate_grad_batches," in err and "callbacks+" not in err
    assert main(["fit", "--config", str(CONFIG), "--ckpt_pth", "last"]) == 2
    assert "Did you mean 'ckpt_path'?" in capsys.readouterr().err


def test_misspelt_config_keys_and_init_args(in_examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"]["max_epoch"] = config["trainer"].pop("max_epochs")
    (in_examples / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "trainer: unknown key 'max_epoch'. Did you mean 'max_epochs'?" in err
    assert main(["fit", "--config", str(CONFIG), "--model.init_args.n_layr", "3"]) == 2
    err = capsys.readouterr().err
    assert "bytegpt.ByteGPT has no init argument 'n_layr'. Did you mean 'n_layer'?" in err
    assert "Valid: block_size, n_layer, n_head, n_embd," in err
    assert main(["fit", "--config", str(CONFIG), "--trainer.precision", "bf17-mixed"]) == 2
    assert 'Did you mean "bf16-mixed"?' in capsys.readouterr().err  # the Trainer's own check


def test_config_values_are_data_and_only_named_classes_are_imported(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = in_examples / "imported.txt"
    (in_examples / "sidecar.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    code = "__import__('os').system('touch pwned')"
    assert main(["fit", "--config", str(CONFIG), "--trainer.default_root_dir", code, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["default_root_dir"] == code  # a string, not run
    assert not (in_examples / "pwned").exists() and not marker.exists()  # sidecar.py was never named
    assert "bytegpt" in sys.modules and "sidecar" not in sys.modules
    # YAML tags that would construct Python objects are refused by the safe loader
    (in_examples / "tagged.yaml").write_text("trainer:\n  default_root_dir: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["fit", "--config", str(CONFIG), "--config", "tagged.yaml", "--print_config"]) == 2
    assert not (in_examples / "pwned").exists()
