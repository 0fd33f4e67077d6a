"""``ember report RUN_DIR [RUN_DIR ...]``: a run directory of either layer as one self-contained HTML page.

The page holds PNG charts (matplotlib, Agg backend) embedded as base64 — training and validation loss, learning
rate, throughput, memory and any other logged metric — and a summary table: hyperparameters, best and newest
checkpoint, steps, epochs, wall time, hardware and versions. No scripts, fonts or images are fetched: the file
opens offline, anywhere. Several run directories make one page that compares them side by side (one colour per
run in every chart, one column per run in the table).

What a run directory is:

* the Trainer's ``default_root_dir``: logger directories ``<name>/version_N`` (``metrics.csv`` of ``CSVLogger``,
  event files of ``TensorBoardLogger``, each with ``hparams.yaml``) and checkpoint directories (``manifest.json``,
  ``trainer.json`` with the ``ModelCheckpoint`` state);
* the Accelerator's ``project_dir``: ``logs/<project>/version_N/metrics.csv`` (``log_with="csv"``) or event files
  (``"tensorboard"``) and ``checkpoints/step-XXXXXXXX/``.

The newest log version is reported (a resumed run continues its version). ``run_info.json``, written by
:func:`record_run` (``make demo`` and ``ember fit`` do), adds the hardware, versions and exact wall time; without
it they come from the checkpoint manifests and the log files' times.

>>> classify("val_loss"), classify("lr-AdamW/pg1"), classify("train/tokens_per_sec"), classify("memory/peak_rss_mb")
('val_loss', 'lr', 'throughput', 'memory')
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Series = dict[str, list[tuple[float, float]]]

#: chart order, titles and y labels
CHARTS: tuple[tuple[str, str, str], ...] = (
    ("train_loss", "Training loss", "loss"),
    ("val_loss", "Validation loss", "loss"),
    ("lr", "Learning rate", "learning rate"),
    ("throughput", "Throughput", "per second"),
    ("memory", "Memory", "MiB"),
    ("other", "Other metrics", "value"),
)
#: one colour per run (the first is what a single-run page uses)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_SKIP = {"epoch", "step", "hp_metric", "global_step"}
RUN_INFO = "run_info.json"


# ----------------------------------------------------------------------------------------------------
# recording (called by the training scripts)
# ----------------------------------------------------------------------------------------------------
def _environment() -> dict[str, Any]:
    import torch

    import ember

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "ember": ember.__version__,
        "platform": platform.platform(), "cpus": os.cpu_count(), "gpus": gpus,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def record_run(root: str | os.PathLike[str], event: str) -> None:
    """Note the start (``event="start"``) or end (``"end"``) of a training session in ``root/run_info.json``.

    Call it on the main process only. A resumed run adds a session; the report sums their durations.

    >>> import json, tempfile
    >>> root = tempfile.mkdtemp()
    >>> record_run(root, "start"); record_run(root, "end")
    >>> info = json.load(open(f"{root}/run_info.json"))
    >>> len(info["sessions"]), sorted(info["sessions"][0])
    (1, ['end', 'start'])
    """
    if event not in ("start", "end"):
        raise ValueError(f"record_run(event={event!r}): use 'start' or 'end'.")
    path = Path(root) / RUN_INFO
    info: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    now = time.time()
    if event == "start":
        info["environment"] = _environment()
        info["sessions"].append({"start": now})
    elif info["sessions"]:
        info["sessions"][-1]["end"] = now
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# reading a run directory
# ----------------------------------------------------------------------------------------------------
def classify(name: str) -> str:
    """The chart a metric belongs to: train_loss, val_loss, lr, throughput, memory, other (or "" = not plotted)."""
    key = name.lower()
    if key in _SKIP:
        return ""
    if key.startswith(("val", "validation")) and "loss" in key:
        return "val_loss"
    if "loss" in key and not key.startswith("test"):
        return "train_loss"
    if key in ("lr", "learning_rate") or key.startswith(("lr-", "lr/", "lr_", "learning_rate")):
        return "lr"
    if "per_sec" in key or "throughput" in key or key.endswith(("/s", "_per_s")):
        return "throughput"
    if "mem" in key:
        return "memory"
    return "other"


def read_csv_metrics(path: Path) -> Series:
    """``metrics.csv`` (step column + one column per metric, empty cells for metrics not logged in a row)."""
    series: Series = {}
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            step_text = row.get("step") or ""
            try:
                step = float(step_text)
            except ValueError:
                continue
            for key, text in row.items():
                if key in (None, "step") or not text:
                    continue
                try:
                    series.setdefault(str(key), []).append((step, float(text)))
                except ValueError:
                    continue
    return series


def read_event_metrics(log_dir: Path) -> tuple[Series, list[float]]:
    """Scalars of TensorBoard event files in ``log_dir`` and their wall times (needs the tensorboard package)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise SystemExit(
            f"ember report: {log_dir} holds TensorBoard event files; reading them needs the `tensorboard` "
            "package: pip install ember[tensorboard] (or log with CSVLogger too)."
        ) from err
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    series: Series = {}
    times: list[float] = []
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        series[tag] = [(float(e.step), float(e.value)) for e in events]
        times += [float(e.wall_time) for e in events]
    return series, times


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def _is_checkpoint_part(path: Path, root: Path) -> bool:
    return any((parent / "manifest.json").is_file() for parent in path.parents if root in parent.parents)


def find_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint directories under ``root`` (those holding a ``manifest.json``), oldest step first."""
    found = []
    for manifest in root.rglob("manifest.json"):
        ckpt = manifest.parent
        if ckpt.name.startswith((".tmp-", ".old-")):
            continue
        try:
            step = int(json.loads(manifest.read_text()).get("step", -1))
        except (OSError, ValueError, AttributeError):
            continue
        found.append((step, ckpt.stat().st_mtime, ckpt))
    return [c for _, _, c in sorted(found)]


@dataclass
class Run:
    """Everything the page shows about one run directory."""

    root: Path
    series: Series = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.root.name or str(self.root)


def _read_logs(run: Run) -> None:
    root = run.root
    csvs = [p for p in root.rglob("metrics.csv") if not _is_checkpoint_part(p, root)]
    events = [p for p in root.rglob("events.out.tfevents.*") if not _is_checkpoint_part(p, root)]
    newest_csv = _newest(csvs)
    if newest_csv is not None:
        run.series = read_csv_metrics(newest_csv)
        run.sources.append(str(newest_csv.relative_to(root)))
        log_dir = newest_csv.parent
        run.times += [p.stat().st_mtime for p in log_dir.iterdir() if p.is_file()]
    elif events:
        newest_event = _newest(events)
        assert newest_event is not None
        log_dir = newest_event.parent
        run.series, times = read_event_metrics(log_dir)
        run.times += times
        run.sources.append(str(log_dir.relative_to(root)) + "/ (TensorBoard)")
    else:
        raise SystemExit(
            f"ember report: no metrics.csv or TensorBoard event files under {root}. Point it at a run directory: "
            "the Trainer's default_root_dir, or the Accelerator's project_dir (with log_with='csv' or "
            "'tensorboard')."
        )
    hparams = log_dir / "hparams.yaml"
    if hparams.is_file():
        import yaml

        loaded = yaml.safe_load(hparams.read_text())
        run.hparams = loaded if isinstance(loaded, dict) else {}
    others = sorted({str(p.parent.relative_to(root)) for p in [*csvs, *events]} - {str(log_dir.relative_to(root))})
    if others:
        run.summary["other logs"] = ", ".join(others)


def _best_checkpoint(ckpt: Path, root: Path, ckpts: list[Path]) -> str | None:
    """``ModelCheckpoint``'s best path and score from a Trainer checkpoint's ``trainer.json``.

    The saved path is as the run spelled it (maybe relative to another working directory): it is matched
    by name against the checkpoints found under ``root``.
    """
    if not (ckpt / "trainer.json").is_file():
        return None
    from ember.checkpoint import CheckpointError, load_state

    try:
        state = load_state(ckpt, "trainer")
    except CheckpointError:
        return None
    for key, value in (state.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("best_model_path"):
            score = value.get("best_model_score")
            shown = f" ({value.get('monitor')}={float(score):.4g})" if score is not None else ""
            saved = Path(str(value["best_model_path"]))
            found = next((c for c in reversed(ckpts) if c.name == saved.name), saved)
            return _relative(found, root) + shown
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _read_checkpoints(run: Run) -> dict[str, Any]:
    ckpts = find_checkpoints(run.root)
    if not ckpts:
        run.summary["checkpoints"] = "none"
        return {}
    newest = ckpts[-1]
    manifest: dict[str, Any] = json.loads((newest / "manifest.json").read_text())
    run.summary["checkpoints"] = f"{len(ckpts)}; newest: {_relative(newest, run.root)} (step {manifest.get('step')})"
    best = _best_checkpoint(newest, run.root, ckpts)
    if best:
        run.summary["best checkpoint"] = best
    run.times += [c.stat().st_mtime for c in ckpts]
    return manifest


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _epochs_done(root: Path, manifest: dict[str, Any]) -> int | None:
    """Finished epochs: the Trainer's loop state of the newest checkpoint, else the manifest's epoch."""
    ckpts = find_checkpoints(root)
    if ckpts and (ckpts[-1] / "trainer.json").is_file():
        from ember.checkpoint import CheckpointError, load_state

        try:
            loop = load_state(ckpts[-1], "trainer").get("loop", {})
            return int(loop["epoch"]) + int(bool(loop.get("epoch_finished")))
        except (CheckpointError, KeyError, TypeError, ValueError):
            pass
    return int(manifest["epoch"]) if isinstance(manifest.get("epoch"), int) else None


def _summarise(run: Run, manifest: dict[str, Any]) -> None:
    info_path = run.root / RUN_INFO
    info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.is_file() else {}
    layer = "Trainer" if (run.root / "checkpoints").is_dir() and any(run.root.rglob("trainer.json")) else (
        "Accelerator" if (run.root / "logs").is_dir() else "")
    if layer:
        run.summary["layer"] = layer
    steps = max((s for values in run.series.values() for s, _ in values), default=None)
    run.summary["steps"] = str(manifest.get("step", int(steps) if steps is not None else "?"))
    epochs = _epochs_done(run.root, manifest)
    if epochs is not None:
        run.summary["epochs"] = str(epochs)
    sessions = [s for s in info.get("sessions", []) if "end" in s]
    if sessions:
        total = sum(s["end"] - s["start"] for s in sessions)
        run.summary["wall time"] = _duration(total) + (f" in {len(sessions)} sessions" if len(sessions) > 1 else "")
    elif len(run.times) > 1:
        run.summary["wall time"] = "≈ " + _duration(max(run.times) - min(run.times)) + " (from file times)"
    for category, label, pick in (("train_loss", "last training loss", -1), ("val_loss", "best validation loss", 0)):
        names = [n for n in run.series if classify(n) == category]
        if names:
            values = [v for _, v in run.series[_primary(names, category)]]
            run.summary[label] = f"{(min(values) if pick == 0 else values[-1]):.4g}"
    env = info.get("environment", {})
    hardware = [f"{env.get('cpus', '?')} CPUs", *(env.get("gpus") or [])] if env else []
    parts = [", ".join(hardware)] if hardware else []
    for key in ("world_size", "strategy", "precision"):
        if key in manifest:
            parts.append(f"{key.replace('_', ' ')} {manifest[key]}")
    run.summary["hardware"] = "; ".join(parts) or "not recorded"
    versions = [f"{k} {env[k]}" for k in ("ember", "torch", "python") if k in env]
    if not versions and "ember_version" in manifest:
        versions = [f"ember {manifest['ember_version']}"]
    run.summary["versions"] = ", ".join(versions) or "not recorded"
    if env.get("platform"):
        run.summary["platform"] = str(env["platform"])
    run.summary["logs"] = ", ".join(run.sources)


def load_run(root: str | os.PathLike[str]) -> Run:
    """Read the logs, checkpoints and ``run_info.json`` of one run directory."""
    path = Path(root)
    if not path.is_dir():
        raise SystemExit(f"ember report: {str(path)!r} is not a directory (give a run directory).")
    run = Run(path)
    _read_logs(run)
    manifest = _read_checkpoints(run)
    _summarise(run, manifest)
    return run


# ----------------------------------------------------------------------------------------------------
# charts and the page
# ----------------------------------------------------------------------------------------------------
_PREFERRED = {
    "train_loss": ("train_loss", "train_loss_step", "loss", "train/loss"),
    "val_loss": ("val_loss", "val_loss_epoch", "val/loss"),
    "throughput": ("train/tokens_per_sec", "tokens_per_sec", "train/samples_per_sec", "samples_per_sec",
                   "train/batches_per_sec"),
}


def _primary(names: list[str], category: str) -> str:
    for preferred in _PREFERRED.get(category, ()):
        if preferred in names:
            return preferred
    for hint in ("tokens", "samples"):
        found = [n for n in names if hint in n]
        if found:
            return sorted(found)[0]
    return sorted(names)[0]


def _plotted(run: Run, category: str) -> list[str]:
    names = [n for n in run.series if classify(n) == category]
    if not names:
        return []
    if category in _PREFERRED:
        return [_primary(names, category)]
    return sorted(names)[:6]


def chart(runs: Sequence[Run], category: str, title: str, ylabel: str) -> str | None:
    """One PNG chart (base64) of ``category`` for every run, or None when no run logged it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    lines = [(i, run, name) for i, run in enumerate(runs) for name in _plotted(run, category)]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    styles = ("-", "--", ":", "-.")
    seen: dict[int, int] = {}
    for i, run, name in lines:
        k = seen[i] = seen.get(i, -1) + 1
        steps, values = zip(*run.series[name])
        label = name if len(runs) == 1 else f"{run.label}: {name}"
        few = len(steps) <= 30
        # earlier runs drawn wider: a later run with the same values leaves them visible as a rim
        width = 2.0 + 2.4 * (len(runs) - 1 - i)
        ax.plot(steps, values, styles[k % len(styles)], color=COLOURS[i % len(COLOURS)], linewidth=width,
                marker="o" if few else None, markersize=4 + 2 * (len(runs) - 1 - i), label=label)
    if category == "lr" and all(v > 0 for _, run, name in lines for _, v in run.series[name]):
        spread = [v for _, run, name in lines for _, v in run.series[name]]
        if max(spread) / min(spread) > 50:
            ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } .muted { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 12px 0 24px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } figure { margin: 0 0 18px; } img { display: block; width: 900px; height: 320px; }
figcaption { color: #666; font-size: 0.85em; } code { font-size: 0.95em; }
"""


def _cell(value: Any) -> str:
    return html.escape(str(value)) if value not in (None, "") else "&mdash;"


def _hparams_cell(hparams: dict[str, Any]) -> str:
    if not hparams:
        return "&mdash;"
    return "<br>".join(f"<code>{html.escape(str(k))}</code> = {html.escape(json.dumps(v, default=str))}"
                       for k, v in hparams.items())


_ROW_ORDER = ("layer", "steps", "epochs", "wall time", "last training loss", "best validation loss",
              "best checkpoint", "checkpoints", "hardware", "platform", "versions", "logs", "other logs")


def render(runs: Sequence[Run]) -> str:
    """The whole HTML page (charts embedded; nothing external)."""
    keys = [k for k in _ROW_ORDER if any(k in r.summary for r in runs)]
    for run in runs:
        keys += [k for k in run.summary if k not in keys]
    head = "".join(
        f'<th><span style="color:{COLOURS[i % len(COLOURS)]}">&#9632;</span> {_cell(run.label)}</th>'
        for i, run in enumerate(runs))
    rows = [f"<tr><th>run directory</th>{''.join(f'<td>{_cell(r.root)}</td>' for r in runs)}</tr>"]
    rows += [f"<tr><th>{_cell(k)}</th>{''.join(f'<td>{_cell(r.summary.get(k))}</td>' for r in runs)}</tr>"
             for k in keys]
    rows.append(f"<tr><th>hyperparameters</th>{''.join(f'<td>{_hparams_cell(r.hparams)}</td>' for r in runs)}</tr>")
    figures = []
    for category, title, ylabel in CHARTS:
        png = chart(runs, category, title, ylabel)
        if png is None:
            if category != "other":
                figures.append(f'<p class="muted">{html.escape(title)}: not logged.</p>')
            continue
        names = sorted({n for run in runs for n in _plotted(run, category)})
        figures.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
                       f"<figcaption>{html.escape(', '.join(names))}</figcaption></figure>")
    title = "ember run report" if len(runs) == 1 else f"ember run report: {len(runs)} runs compared"
    generated = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p class=\"muted\">{_cell(', '.join(str(r.root) for r in runs))} &middot; generated {generated}</p>\n"
        f"<table><tr><th></th>{head}</tr>\n" + "\n".join(rows) + "</table>\n" + "\n".join(figures)
        + "\n</body></html>\n"
    )


def write_report(run_dirs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> Path:
    """Read every run directory and write the page to ``output``; returns its path.

    Raises ``SystemExit`` with a message for a missing directory, a directory without logs, or missing
    matplotlib (``pip install ember[report]``).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise SystemExit("ember report needs matplotlib for its charts: pip install ember[report]") from err
    runs = [load_run(d) for d in run_dirs]
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``ember report RUN_DIR [RUN_DIR ...] [-o OUTPUT]``."""
    parser = argparse.ArgumentParser(prog="ember report", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (several: compared)")
    parser.add_argument("-o", "--output", default=None,
                        help="HTML file (default: RUN_DIR/report.html for one run, ./compare.html for several)")
    ns = parser.parse_args(argv)
    output = ns.output or (Path(ns.run_dirs[0]) / "report.html" if len(ns.run_dirs) == 1 else Path("compare.html"))
    try:
        path = write_report(ns.run_dirs, output)
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
            return 2
        raise
    print(f"wrote {path} ({math.ceil(path.stat().st_size / 1024)} KiB; open it in a browser)")
    return 0
