"""The curated public API: every exported name resolves, is documented, and `import ember` stays light."""

from __future__ import annotations

import subprocess
import sys

import ember


def test_every_exported_name_resolves_and_has_a_docstring() -> None:
    for name in ember.__all__:
        if name == "__version__":
            continue
        obj = getattr(ember, name)
        assert obj.__doc__, f"ember.{name} has no docstring"


def test_import_ember_is_lazy() -> None:
    code = (
        "import sys, ember; heavy = [m for m in ('ember.accelerator', 'ember.trainer', 'ember.loggers', "
        "'transformers', 'tensorboard', 'wandb', 'mlflow', 'rich') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute_names_the_module() -> None:
    try:
        ember.Acelerator  # noqa: B018
    except AttributeError as err:
        assert "Acelerator" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_house_limits_on_module_size_and_environment_reads() -> None:
    """DESIGN's limits: the Accelerator facade under 500 lines, no source file over 600, and ``EMBER_*`` variables
    read in one module (``ember._env``); ``ember launch`` only writes them for its children."""
    import re
    from pathlib import Path

    src = Path(ember.__file__).parent
    sizes = {str(p.relative_to(src)): len(p.read_text().splitlines()) for p in src.rglob("*.py")}
    assert sizes["accelerator.py"] < 500, sizes["accelerator.py"]
    assert not {name: n for name, n in sizes.items() if n > 600}
    reads = re.compile(r"""(\.get|getenv)\(\s*["']EMBER_|\[["']EMBER_\w*["']\](?!\s*=)""")
    readers = {str(p.relative_to(src)) for p in src.rglob("*.py") if reads.search(p.read_text())}
    assert readers == {"_env.py"}, readers
