"""Acceptance run: the anchors' own example scripts on ember, with only the import changed.

Reads Accelerate's and Lightning's example scripts from checkouts given on the command line (a work tree, or a
bare git directory read with ``git show``), rewrites their imports with the rules in ``REWRITES`` (nothing else in
the text changes), and runs each case on 1 and 2 CPU processes (``ember launch --cpu --num_processes 2``). Hub
downloads are replaced by tiny local stand-ins (``acceptance/shim``, copied to a temporary directory and put first
on ``PYTHONPATH``). Prints one row per case: passed / failed / behaviour differs / skipped, and why.

    python acceptance/run_anchor_examples.py \\
        --accelerate /path/to/accelerate --lightning /path/to/pytorch-lightning [--procs 1,2] [--only REGEX]

``--target anchor`` runs the same cases on the unmodified scripts with Accelerate / Lightning themselves
(2 processes through ``torch.distributed.run``), to compare. This is not part of the test suite: the scripts are
the anchors' text, read at run time, never copied into this repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (pattern, replacement) applied line by line, in this order, to every script run on ember. Nothing else changes.
REWRITES: list[tuple[str, str]] = [
    (r"^(\s*)from accelerate\.local_sgd import\b", r"\1from ember.local_sgd import"),
    (r"^(\s*)from accelerate\.utils import\b", r"\1from ember.utils import"),
    (r"^(\s*)from accelerate import\b", r"\1from ember import"),
    (r"^(\s*)import accelerate$", r"\1import ember as accelerate"),
    (r"^(\s*)import lightning as L$", r"\1import ember as L"),
    (r"^(\s*)import (?:lightning\.pytorch|pytorch_lightning) as pl$", r"\1import ember as pl"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)\.callbacks(?:\.\w+)? import\b", r"\1from ember.callbacks import"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)\.loggers(?:\.\w+)? import\b", r"\1from ember.loggers import"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)\.profilers(?:\.\w+)? import\b", r"\1from ember.profilers import"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)\.utilities(?:\.\w+)* import\b", r"\1from ember.utils import"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)\.cli import\b", r"\1from ember.cli import"),
    (r"^(\s*)from (?:lightning\.pytorch|pytorch_lightning)(?:\.core|\.trainer)? import\b", r"\1from ember import"),
    (r"^(\s*)from lightning import\b", r"\1from ember import"),
    # `lightning.pytorch.demos` (demo models and datasets, not the training API) stays: it is data, like `datasets`.
]


def rewrite(text: str) -> tuple[str, list[str]]:
    """The script with its imports rewritten, and the lines that changed (``old -> new``)."""
    out, changed = [], []
    for line in text.splitlines(keepends=True):
        new = line
        for pattern, repl in REWRITES:
            new = re.sub(pattern, repl, new)
            if new != line:
                break
        if new != line:
            changed.append(f"{line.strip()}  ->  {new.strip()}")
        out.append(new)
    return "".join(out), changed


# ------------------------------------------------------------------------------------------------ the cases
@dataclass
class Run:
    args: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)  # each must appear in the output
    reject: list[str] = field(default_factory=list)  # none may appear in the output
    files: list[str] = field(default_factory=list)  # must exist afterwards (relative to the case folder)
    trace: str | None = None  # record the training batches under this sub-folder (ANCHOR_TRACE_DIR)


@dataclass
class Case:
    name: str
    anchor: str  # "accelerate" | "lightning"
    script: str  # path inside the anchor's repository
    runs: Callable[[int], list[Run]]  # procs -> the runs, in one folder
    requires: tuple[str, ...] = ()  # importable modules without which the case is skipped
    prepare: Callable[[Path], None] | None = None  # writes stand-in data into the case folder
    check: Callable[[Path, int], str | None] | None = None  # behaviour check: None = as expected, else why not


def _one(*args: str, **kw: object) -> Callable[[int], list[Run]]:
    return lambda procs: [Run(list(args), **kw)]  # type: ignore[arg-type]


def _per_epoch(procs: int, rows: int = 72, batch: int = 16) -> int:
    """Batches per process per epoch of the MRPC stand-in's train split (shuffled, no drop_last)."""
    per_rank = -(-rows // procs)
    return -(-per_rank // batch)


def _read_trace(folder: Path, rank: int) -> list[dict[str, object]]:
    path = folder / f"trace-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _resume_check(full: str, resumed: str) -> Callable[[Path, int], str | None]:
    """The resumed run trains on exactly the batches the uninterrupted run trained on after the step it resumed
    from; if not, say where they part and whether the rest of the resumed epoch still holds the same samples."""

    def check(folder: Path, procs: int) -> str | None:
        n, per_epoch = _mid_epoch_step(procs), _per_epoch(procs)
        for rank in range(procs):
            before = _read_trace(folder / full, rank)[n:]
            after = _read_trace(folder / resumed, rank)
            if [t["ids"] for t in after] == [t["ids"] for t in before]:
                continue
            first = next(i for i, (a, b) in enumerate([*zip(after, before), (None, None)]) if a is None or a != b)
            rest = per_epoch - n % per_epoch  # batches left in the resumed epoch

            def rows(batches: list[dict[str, object]]) -> list[str]:
                return sorted(r for t in batches for r in t["rows"])  # type: ignore[attr-defined]

            same_rows = rows(after[:rest]) == rows(before[:rest])
            later = [t["ids"] for t in after[rest:]] == [t["ids"] for t in before[rest:]]
            return (f"rank {rank}: resumed at step_{n} ({rest} batches left in that epoch), the run trained "
                    f"{len(after)} batches where the uninterrupted run trained {len(before)}; they differ from batch "
                    f"{first} on; the rest of the resumed epoch holds {'the same' if same_rows else 'other'} samples"
                    f"{' in another order' if same_rows else ''}; the later epochs are "
                    f"{'identical' if later else 'different'}")
        return None

    return check


def _padding_check(mixed: bool) -> Callable[[Path, int], str | None]:
    """nlp_example pads every batch to a multiple of 8 exactly when ``accelerator.mixed_precision != "no"``."""

    def check(folder: Path, procs: int) -> str | None:
        widths = sorted({t["shape"][1] for t in _read_trace(folder / "trace", 0)})  # type: ignore[index]
        if not widths:
            return "no training batch traced"
        padded = all(w % 8 == 0 for w in widths)
        if padded != mixed:
            return (f"batch widths {widths}: the script's `mixed_precision != \"no\"` branch was "
                    f"{'taken' if padded else 'not taken'}")
        return None

    return check


def _mid_epoch_step(procs: int) -> int:
    return _per_epoch(procs) + 2  # second epoch, third batch (of 5 on 1 process, 3 on 2)


def _checkpointing_runs(script_ckpt: str) -> Callable[[int], list[Run]]:
    def runs(procs: int) -> list[Run]:
        n = _mid_epoch_step(procs)
        return [
            Run(["--checkpointing_steps", "epoch", "--output_dir", "ckpt"], files=["ckpt/epoch_0", "ckpt/epoch_2"]),
            Run(["--resume_from_checkpoint", "ckpt/epoch_0"], expect=["epoch 1:", "epoch 2:"], reject=["epoch 0:"]),
            Run(["--checkpointing_steps", "1", "--output_dir", "steps"], files=[f"steps/step_{n}"], trace="full"),
            Run(["--resume_from_checkpoint", f"steps/step_{n}"], expect=["epoch 2:"], reject=["epoch 0:"],
                trace="resumed"),
        ]

    return runs


ACC, LIT = "accelerate", "lightning"
BF = "examples/by_feature"


def _pets(folder: Path) -> None:
    """A stand-in for the Oxford pets images: 20 small JPEGs named ``<breed>_<n>.jpg``."""
    from PIL import Image

    rng = random.Random(0)
    (folder / "images").mkdir()
    for i in range(20):
        label = ("beagle", "persian")[i % 2]
        shade = (rng.randrange(256), rng.randrange(256), 255 * (i % 2))
        Image.new("RGB", (48, 40), shade).save(folder / "images" / f"{label}_{i}.jpg")


def _wikitext2(folder: Path) -> None:
    """A stand-in for ``lightning.pytorch.demos.WikiText2``'s download: ``data/wikitext-2.txt`` with 4,300 blocks."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    (folder / "data").mkdir()
    lines = (" ".join(rng.choice(words) for _ in range(20)) for _ in range(4300 * 35 // 21 + 2))
    (folder / "data" / "wikitext-2.txt").write_text("\n".join(lines) + "\n")


PL_ARGS = ["--data.batch_size=32", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
           "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=2",
           "--optimizer=Adam", "--trainer.accelerator=cpu"]

CASES: list[Case] = [
    Case("nlp_example", ACC, "examples/nlp_example.py", _one(trace="trace"), check=_padding_check(False)),
    Case("nlp_example --mixed_precision bf16", ACC, "examples/nlp_example.py",
         _one("--mixed_precision", "bf16", trace="trace"), check=_padding_check(True)),
    Case("complete_nlp_example (checkpoint, resume)", ACC, "examples/complete_nlp_example.py",
         _checkpointing_runs("complete"), check=_resume_check("full", "resumed")),
    Case("complete_nlp_example --with_tracking", ACC, "examples/complete_nlp_example.py",
         _one("--with_tracking", "--project_dir", "logs", expect=["epoch 2:"])),
    Case("cv_example", ACC, "examples/cv_example.py", _one("--data_dir", "images"), requires=("timm", "torchvision"),
         prepare=_pets),
    Case("complete_cv_example", ACC, "examples/complete_cv_example.py",
         _one("--data_dir", "images", "--checkpointing_steps", "epoch", "--output_dir", "ckpt"),
         requires=("timm", "torchvision"), prepare=_pets),
    Case("by_feature/automatic_gradient_accumulation", ACC, f"{BF}/automatic_gradient_accumulation.py", _one()),
    Case("by_feature/checkpointing (checkpoint, resume)", ACC, f"{BF}/checkpointing.py", _checkpointing_runs("bf"),
         check=_resume_check("full", "resumed")),
    Case("by_feature/cross_validation", ACC, f"{BF}/cross_validation.py", _one("--num_folds", "2"),
         requires=("sklearn",)),
    Case("by_feature/ddp_comm_hook", ACC, f"{BF}/ddp_comm_hook.py", _one("--ddp_comm_hook", "fp16")),
    Case("by_feature/early_stopping", ACC, f"{BF}/early_stopping.py", _one()),
    Case("by_feature/gradient_accumulation", ACC, f"{BF}/gradient_accumulation.py",
         _one("--gradient_accumulation_steps", "2")),
    Case("by_feature/gradient_accumulation_for_autoregressive_models", ACC,
         f"{BF}/gradient_accumulation_for_autoregressive_models.py", _one("--gradient_accumulation_steps", "2")),
    Case("by_feature/local_sgd", ACC, f"{BF}/local_sgd.py", _one()),
    Case("by_feature/memory", ACC, f"{BF}/memory.py", _one()),
    Case("by_feature/multi_process_metrics", ACC, f"{BF}/multi_process_metrics.py", _one()),
    Case("by_feature/profiler", ACC, f"{BF}/profiler.py", _one()),
    Case("by_feature/schedule_free", ACC, f"{BF}/schedule_free.py", _one(), requires=("schedulefree",)),
    Case("by_feature/tracking", ACC, f"{BF}/tracking.py", _one("--with_tracking", "--project_dir", "logs")),
    Case("pytorch/basics/transformer", LIT, "examples/pytorch/basics/transformer.py", _one(), prepare=_wikitext2),
    Case("pytorch/bug_report/bug_report_model", LIT, "examples/pytorch/bug_report/bug_report_model.py", _one()),
    Case("pytorch/basics/backbone_image_classifier", LIT, "examples/pytorch/basics/backbone_image_classifier.py",
         _one(*PL_ARGS), requires=("torchvision",)),
    Case("pytorch/basics/autoencoder", LIT, "examples/pytorch/basics/autoencoder.py", _one(*PL_ARGS),
         requires=("torchvision",)),
    Case("pytorch/basics/profiler_example", LIT, "examples/pytorch/basics/profiler_example.py",
         _one("--trainer.accelerator=cpu"), requires=("torchvision",)),
]

#: scripts of the anchors' example folders that are not cases, and why
NOT_CASES = {
    f"{BF}/deepspeed_with_config_support.py": "DeepSpeed on a GPU (and a hub dataset/model of its own)",
    f"{BF}/fsdp_with_peak_mem_tracking.py": "FSDP with CUDA peak-memory tracking: needs GPUs",
    f"{BF}/megatron_lm_gpt_pretraining.py": "Megatron-LM",
}


# ------------------------------------------------------------------------------------------------ running
class Source:
    """An anchor's repository: a work tree, or a git directory read at one commit."""

    def __init__(self, path: str, rev: str = "HEAD") -> None:
        self.path = Path(path)
        self.bare = not (self.path / ".git").exists() and (self.path / "HEAD").is_file()
        git = ["git", f"--git-dir={self.path}"] if self.bare else ["git", "-C", str(self.path)]
        self.git = git
        done = subprocess.run([*git, "rev-parse", rev], capture_output=True, text=True)
        self.commit = done.stdout.strip() if done.returncode == 0 else "(not a git checkout)"
        self.rev = rev

    def read(self, rel: str) -> str:
        if self.bare:
            return subprocess.run([*self.git, "show", f"{self.rev}:{rel}"], capture_output=True, text=True,
                                  check=True).stdout
        return (self.path / rel).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(target: str, procs: int, script: Path, args: list[str]) -> list[str]:
    py = sys.executable
    if procs == 1:
        return [py, str(script), *args]
    if target == "ember":
        return [py, "-m", "ember.cli", "launch", "--cpu", "--num_processes", str(procs), str(script), *args]
    return [py, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(_free_port()),
            str(script), *args]


def _environment(shim: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TESTING_MOCKED_DATALOADERS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(shim), HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", EMBER_HOME=str(home / "ember"), WANDB_MODE="offline",
               WANDB_DIR=str(home), MLFLOW_TRACKING_URI=f"file:{home / 'mlruns'}",
               MLFLOW_ALLOW_FILE_STORE="true", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


_ERROR = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b.*|^ember \w+: error: .*")


def _why(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR.match(line)]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def run_case(case: Case, procs: int, target: str, source: Source, shim: Path, root: Path,
             timeout: float) -> dict[str, object]:
    missing = [m for m in case.requires if importlib.util.find_spec(m) is None]
    result: dict[str, object] = {"case": case.name, "anchor": case.anchor, "procs": procs, "script": case.script}
    if missing:
        return {**result, "status": "skipped", "why": f"needs {', '.join(missing)} (not importable here)"}
    folder = root / f"{re.sub(r'[^A-Za-z0-9]+', '_', case.name)}-{procs}p"
    folder.mkdir(parents=True)
    text = source.read(case.script)
    script = folder / case.script
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(rewrite(text)[0] if target == "ember" else text)
    if case.prepare:
        case.prepare(folder)
    env = _environment(shim, root / "home")
    start = time.monotonic()
    for i, run in enumerate(case.runs(procs)):
        args = ["--cpu", *run.args] if case.anchor == ACC else run.args  # the scripts' own flag: train on the CPU
        run_env = dict(env)
        if run.trace:
            (folder / run.trace).mkdir()
            run_env["ANCHOR_TRACE_DIR"] = str(folder / run.trace)
        try:
            done = subprocess.run(_command(target, procs, script, args), cwd=folder, env=run_env,
                                  capture_output=True, text=True, timeout=timeout)
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as err:
            output, code = f"{err.stdout or ''}{err.stderr or ''}\nTimeoutError: over {timeout:.0f}s", -1
        (folder / f"run{i}.log").write_text(output)
        where = f"run {i + 1} ({' '.join(run.args) or 'no flags'})"
        problem = (f"exit {code}: {_why(output)}" if code != 0 else
                   next((f"output lacks {s!r}" for s in run.expect if s not in output), None) or
                   next((f"output has {s!r}" for s in run.reject if s in output), None) or
                   next((f"{f} was not written" for f in run.files if not (folder / f).exists()), None))
        if problem:
            return {**result, "status": "failed", "why": f"{where}: {problem}",
                    "seconds": round(time.monotonic() - start, 1)}
    why = case.check(folder, procs) if case.check else None
    return {**result, "status": "differs" if why else "passed", "why": why or "",
            "seconds": round(time.monotonic() - start, 1)}


def markdown_table(ember_json: str, anchor_json: str | None = None) -> str:
    """One row per case and process count: ember's result (and the anchor's, from a ``--target anchor`` run)."""
    ours = json.loads(Path(ember_json).read_text())["results"]
    theirs = {(r["case"], r["procs"]): r for r in json.loads(Path(anchor_json).read_text())["results"]} \
        if anchor_json else {}
    head = "| case | processes | ember | why |" + (" anchor | anchor: why |" if theirs else "")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in ours:
        row = f"| {r['case']} | {r['procs']} | {r['status']} | {str(r['why']).replace('|', '/')} |"
        if theirs:
            a = theirs.get((r["case"], r["procs"]), {"status": "not run", "why": ""})
            row += f" {a['status']} | {str(a['why']).replace('|', '/')} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerate", help="Accelerate's repository (work tree or git directory)")
    parser.add_argument("--lightning", help="Lightning's repository (work tree or git directory)")
    parser.add_argument("--rev", default="HEAD", help="commit to read from git directories (default HEAD)")
    parser.add_argument("--target", choices=["ember", "anchor"], default="ember",
                        help="ember: rewritten imports (default); anchor: the unmodified scripts on the anchor")
    parser.add_argument("--procs", default="1,2", help="process counts to run each case on (default 1,2)")
    parser.add_argument("--only", default=None, help="run only the cases whose name matches this regex")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run (default 600)")
    parser.add_argument("--keep", default=None, help="keep the case folders (scripts, logs, traces) here")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--show-rewrites", action="store_true", help="print each script's rewritten lines and stop")
    parser.add_argument("--table", nargs="+", metavar="JSON", default=None,
                        help="print the markdown table of an ember --json file (and an anchor one) and stop")
    ns = parser.parse_args(argv)
    if ns.table:
        print(markdown_table(*ns.table[:2]))
        return 0
    sources = {ACC: ns.accelerate, LIT: ns.lightning}
    cases = [c for c in CASES if sources[c.anchor] and (ns.only is None or re.search(ns.only, c.name))]
    if not cases:
        parser.error("no case selected: give --accelerate and/or --lightning (and check --only)")
    repos = {name: Source(path, ns.rev) for name, path in sources.items() if path}
    if ns.show_rewrites:
        for case in cases:
            print(f"== {case.script}", *rewrite(repos[case.anchor].read(case.script))[1], sep="\n  ")
        return 0
    root = Path(ns.keep or tempfile.mkdtemp(prefix="anchor-examples-"))
    root.mkdir(parents=True, exist_ok=True)
    shim = root / "shim"
    shutil.copytree(HERE / "shim", shim, dirs_exist_ok=True)
    for name, repo in repos.items():
        print(f"# {name}: {repo.path} at {repo.commit}", flush=True)
    results = []
    for case in cases:
        for procs in (int(p) for p in ns.procs.split(",")):
            result = run_case(case, procs, ns.target, repos[case.anchor], shim, root, ns.timeout)
            results.append(result)
            print(f"{result['status']:>8}  {procs}p  {case.name}  {result.get('seconds', '')}s  {result['why']}",
                  flush=True)
    counted = [r for r in results if r["status"] != "skipped"]
    print(f"\n{sum(r['status'] == 'passed' for r in counted)} of {len(counted)} cases passed "
          f"({sum(r['status'] == 'differs' for r in counted)} ran with a different behaviour, "
          f"{len(results) - len(counted)} skipped); target: {ns.target}; folders: {root}")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"target": ns.target, "commits": {n: r.commit for n, r in repos.items()},
                                             "results": results}, indent=1))
    if not ns.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["status"] in ("passed", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
