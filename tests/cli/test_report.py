"""`ember report`: real run directories of both layers (the demo's, small) become one self-contained HTML page with
charts and a summary; several runs compare side by side; headless Chromium renders it and the screenshot shows
the charts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ember.cli import main
from ember.cli.report import COLOURS, classify, load_run, render, write_report

pytest.importorskip("matplotlib", reason="ember report needs the report extra (matplotlib)")

ROOT = Path(__file__).resolve().parents[2]


def _script(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}  # the runs mean the CPU, also on a GPU box
    out = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Trainer run (examples/demo.py) and an Accelerator run (examples/demo_accelerator.py), 2 small epochs."""
    base = tmp_path_factory.mktemp("runs")
    _script([str(ROOT / "examples" / "demo.py"), "--root", "trainer", "--small", "--epochs", "2", "--no-report"], base)
    _script([str(ROOT / "examples" / "demo_accelerator.py"), "--project-dir", "accelerator", "--small", "--epochs", "2"],
            base)
    return {"trainer": base / "trainer", "accelerator": base / "accelerator"}


def test_classify_metric_names() -> None:
    names = {"train_loss": "train_loss", "loss": "train_loss", "val_loss": "val_loss", "val/loss": "val_loss",
             "lr-AdamW/pg1": "lr", "lr": "lr", "train/tokens_per_sec": "throughput", "memory/peak_rss_mb": "memory",
             "val_acc": "other", "epoch": "", "step": ""}
    assert {n: classify(n) for n in names} == names


def test_trainer_run_summary_and_page(runs: dict[str, Path]) -> None:
    run = load_run(runs["trainer"])
    s = run.summary
    assert s["layer"] == "Trainer" and s["steps"] == "30" and s["epochs"] == "2"
    assert s["best checkpoint"].startswith("checkpoints/epoch=1-step=30-val_loss=") and "(val_loss=" in s["best checkpoint"]
    assert s["logs"] == "logs/csv/version_0/metrics.csv" and s["other logs"] == "logs/tensorboard/version_0"
    assert "world size 1" in s["hardware"] and "precision 32-true" in s["hardware"] and "CPUs" in s["hardware"]
    assert s["versions"].startswith("ember 0.1.0, torch ") and re.fullmatch(r"\d+:\d\d", s["wall time"])
    assert float(s["best validation loss"]) < 4.5  # it learned (untrained: 5.55)
    assert run.hparams["n_layer"] == 2 and run.hparams["batch_size"] == 16
    kinds = {classify(name) for name in run.series}
    assert {"train_loss", "val_loss", "lr", "throughput", "memory"} <= kinds
    page = render([run])
    assert page.count('src="data:image/png;base64,') == 5  # loss, val loss, lr, throughput, memory
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def test_accelerator_run_and_tensorboard_only_run(runs: dict[str, Path], tmp_path: Path) -> None:
    s = load_run(runs["accelerator"]).summary
    assert s["layer"] == "Accelerator" and s["steps"] == "30" and s["logs"] == "logs/demo/version_0/metrics.csv"
    assert s["checkpoints"] == "2; newest: checkpoints/step-00000030 (step 30)"
    # without the CSV logs the TensorBoard event files are read
    copy = tmp_path / "tb-only"
    shutil.copytree(runs["trainer"], copy)
    shutil.rmtree(copy / "logs" / "csv")
    run = load_run(copy)
    assert run.summary["logs"] == "logs/tensorboard/version_0/ (TensorBoard)"
    val = [v for _, v in run.series["val_loss"]]
    assert len(val) == 2 and val[1] < val[0]


def test_errors_name_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.csv or TensorBoard event files under" in capsys.readouterr().err


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (`make test` installs Debian's chromium when apt-get can)")
    return found


def _screenshot(page: Path, out: Path, tmp_path: Path) -> None:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars", "--window-size=1280,3400",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",  # all images decoded
           f"--screenshot={out}", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), done.stderr[-3000:]


def _bands(image: object, colour: str, min_pixels: int = 200) -> list[tuple[int, int]]:
    """Vertical ranges of the screenshot holding at least ``min_pixels`` pixels of ``colour`` (chart lines)."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB")).astype(int)  # type: ignore[attr-defined]
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    hits = (np.abs(rgb - target).max(axis=2) < 40).sum(axis=1)
    bands, start, count, last = [], None, 0, -100
    for row in np.nonzero(hits)[0]:
        if row - last > 30:
            if start is not None and count >= min_pixels:
                bands.append((start, last))
            start, count = row, 0
        count += int(hits[row])
        last = row
    if start is not None and count >= min_pixels:
        bands.append((start, last))
    return bands


def test_report_renders_in_chromium_with_its_charts(runs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "compare.html"
    assert main(["report", str(runs["trainer"]), str(runs["accelerator"]), "-o", str(page)]) == 0
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 5 and "2 runs compared" in html
    shot = tmp_path / "shot.png"
    _screenshot(page, shot, tmp_path)
    image = Image.open(shot)
    # each run's colour draws a line in each of the 5 charts, one under the other
    first, second = _bands(image, COLOURS[0]), _bands(image, COLOURS[1])
    assert len(first) >= 5 and len(second) >= 5, (first, second)
    # and the charts are the images (a page whose images failed to load has no coloured lines at all)
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", html))
    _screenshot(broken, tmp_path / "broken.png", tmp_path)
    assert _bands(Image.open(tmp_path / "broken.png"), COLOURS[0]) == []


def test_single_run_default_output(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = write_report([runs["accelerator"]], runs["accelerator"] / "report.html")
    assert out.is_file() and out.stat().st_size > 20_000
