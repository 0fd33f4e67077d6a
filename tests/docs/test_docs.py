"""Every ```python block of docs/ runs, so the docs cannot rot; `make docs` (mkdocs --strict) builds without warnings.

How a page's blocks run (also told to readers in docs/about-docs.md):

* the blocks of one page run in order in one namespace (a later block may use what an earlier one defined), in a
  fresh interpreter and a fresh working directory;
* ``<!-- docs-test-setup ... -->`` is code the reader does not see, run where it stands (tiny models and data for
  snippets that assume yours);
* ``<!-- docs-test: launch N -->`` right before a block: the block is a whole script, run on N CPU processes with
  ``ember launch --num_processes N --cpu``;
* ``<!-- docs-test: skip REASON -->`` right before a block: not run (e.g. it needs a GPU or several machines); the
  reason shows in the test report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
ITEM = re.compile(
    r"<!-- docs-test-setup\n(?P<setup>.*?)-->"
    r"|(?:<!-- docs-test: (?P<directive>[^\n]*?) -->\n)?```python[^\n]*\n(?P<code>.*?)\n```",
    re.S,
)


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(kind, code, line) for each runnable item of ``page``: kind is setup | run | launch N | skip REASON."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in ITEM.finditer(text):
        line = text[: match.start()].count("\n") + 1
        if match.group("setup") is not None:
            found.append(("setup", match.group("setup"), line))
        else:
            found.append((match.group("directive") or "run", match.group("code"), line))
    return found


def _launch(code: str, processes: int, cwd: Path, where: str) -> None:
    script = cwd / "docs_block.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # the test means the CPU
    out = subprocess.run([sys.executable, "-m", "ember.cli", "launch", "--num_processes", str(processes), "--cpu",
                          str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{where} failed on {processes} processes:\n{out.stdout[-2000:]}{out.stderr[-3000:]}"


RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__docs__"}
for where, code in json.load(open(sys.argv[1])):
    try:
        path, line = where.rsplit(":", 1)
        exec(compile("\\n" * int(line) + code, path, "exec"), namespace)  # tracebacks name the page's lines
    except BaseException:
        traceback.print_exc()
        print(f"DOCS BLOCK FAILED: {where}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    items = blocks(page)
    if not any(kind != "setup" for kind, _, _ in items):
        pytest.skip("no python blocks")
    to_run, skipped = [], []
    for kind, code, line in items:
        where = f"{page.relative_to(ROOT)}:{line}"
        if kind.startswith("skip"):
            skipped.append(f"{where}: {kind[4:].strip()}")
        elif kind.startswith("launch"):
            _launch(code, int(kind.split()[1]), tmp_path, where)
        else:
            assert kind in ("run", "setup"), f"{where}: unknown docs-test directive {kind!r}"
            to_run.append((where, code))
    if to_run:
        (tmp_path / "blocks.json").write_text(json.dumps(to_run))
        (tmp_path / "runner.py").write_text(RUNNER)
        env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run([sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    for reason in skipped:
        warnings.warn(f"docs block not run: {reason}", stacklevel=1)


def test_every_page_is_in_the_site_navigation() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python/name:", "x-"))

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        return []

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in PAGES}
    assert listed == on_disk


def test_site_builds_offline_without_warnings(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install ember[docs])")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "WARNING" not in out.stderr, out.stderr[-5000:]
    page = (tmp_path / "site" / "migration" / "lightning.html").read_text()
    assert "LightningCLI" in page and "<table>" in page
    api = (tmp_path / "site" / "api" / "core.html").read_text()
    assert "save_state" in api and "gradient_accumulation_steps" in api  # generated from the docstrings
