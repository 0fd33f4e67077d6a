"""What ember covers of each anchor's API, name by name (prints docs/coverage.md).

The name lists come from the installed ``accelerate`` and ``lightning`` packages (``dir()``, ``__all__``, signatures),
so nothing is left out; the annotations (why a name is missing, what differs on purpose) are ``NOTES`` in
``acceptance/coverage_notes.py``. Run from the repository root with the acceptance extra installed:

    python acceptance/api_coverage.py > docs/coverage.md
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coverage_notes import INTRO, NOTES, PATTERNS


def _public(names: Iterable[str]) -> list[str]:
    return sorted({n for n in names if not n.startswith("_")})


def _params(fn: Any) -> tuple[list[str], bool]:
    """Parameter names (without self) and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in (p.VAR_POSITIONAL,
                                                                                            p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _member(cls: Any, instance: Any, name: str) -> Any:
    """The class's attribute (unevaluated: properties stay properties), else the instance's; None if neither
    (an instance attribute whose value is None counts as present)."""
    if hasattr(cls, name):
        return inspect.getattr_static(cls, name)
    try:
        return (getattr(instance, name) or True) if hasattr(instance, name) else None
    except Exception:  # a property that needs a running fit
        return True


def _missing_args(theirs: Any, ours: Any) -> list[str]:
    if not (callable(theirs) and callable(ours)) or inspect.isclass(theirs):
        return []
    their_args, _ = _params(theirs)
    our_args, our_kwargs = _params(ours)
    return [] if our_kwargs else [a for a in their_args if a not in our_args]


def _note(section: str, name: str) -> str:
    if (section, name) in NOTES:
        return NOTES[(section, name)]
    if section == "Trainer()":
        from ember.trainer._config import LIGHTNING_ONLY

        if name in LIGHTNING_ONLY:  # ember's own message for a ported script that passes it
            return f"refused with a message: {LIGHTNING_ONLY[name]}"
    for (sec, predicate), text in PATTERNS.items():
        if sec in (section, "accelerate.utils" if section == "accelerate" else section) and predicate(name):
            return text
    return ""


def _row(section: str, name: str, present: bool, missing: list[str]) -> tuple[str, str]:
    note = _note(section, name)
    if present and missing:
        status = "partly"
        note = f"lacks argument(s) {', '.join(f'`{m}`' for m in missing)}" + (f"; {note}" if note else "")
    else:
        status = "yes" if present else "no"
    return status, note


def _table(title: str, section: str, rows: list[tuple[str, str, str]]) -> str:
    counts = {s: sum(r[1] == s for r in rows) for s in ("yes", "partly", "no")}
    head = (f"### {title}\n\n{counts['yes']} of {len(rows)} covered, {counts['partly']} partly, {counts['no']} not "
            f"(section key `{section}`).\n\n| name | ember | notes |\n| --- | --- | --- |\n")
    return head + "".join(f"| `{n}` | {s} | {note} |\n" for n, s, note in rows) + "\n"


def _compare(section: str, names: list[str], theirs: Callable[[str], Any],
             ours: Callable[[str], Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name in names:
        their, our = theirs(name), ours(name)
        status, note = _row(section, name, our is not None, _missing_args(their, our) if our is not None else [])
        rows.append((name, status, note))
    return rows


def _accelerate_sections() -> list[str]:
    import accelerate
    import accelerate.utils as au

    import ember
    import ember.utils as eu

    theirs = accelerate.Accelerator(cpu=True)
    ours = ember.Accelerator(cpu=True, verbose=False)
    names = _public([*dir(accelerate.Accelerator), *vars(theirs)])
    out = [_table("`Accelerator` methods and properties", "Accelerator", _compare(
        "Accelerator", names, lambda n: _member(accelerate.Accelerator, theirs, n),
        lambda n: _member(ember.Accelerator, ours, n)))]
    init_theirs, _ = _params(accelerate.Accelerator.__init__)
    init_ours, _ = _params(ember.Accelerator.__init__)
    out.append(_table("`Accelerator(...)` arguments", "Accelerator()", [
        (n, *_row("Accelerator()", n, n in init_ours, [])) for n in init_theirs]))
    top = [n for n in _public(dir(accelerate)) if not inspect.ismodule(getattr(accelerate, n))]
    out.append(_table("`accelerate` top-level names", "accelerate", _compare(
        "accelerate", top, lambda n: getattr(accelerate, n), lambda n: getattr(ember, n, None))))
    utils = [n for n in _public(dir(au)) if not inspect.ismodule(getattr(au, n))]
    out.append(_table("`accelerate.utils` names", "accelerate.utils", _compare(
        "accelerate.utils", utils, lambda n: getattr(au, n), lambda n: getattr(eu, n, None))))
    return out


def _lightning_sections() -> list[str]:
    import lightning.pytorch as pl
    import lightning.pytorch.callbacks as plc
    import lightning.pytorch.loggers as pll
    import lightning.pytorch.profilers as plp
    import torch

    import ember
    import ember.callbacks as ec
    import ember.loggers as el
    import ember.profilers as ep

    out = []
    t_init, _ = _params(pl.Trainer.__init__)
    e_init, _ = _params(ember.Trainer.__init__)
    out.append(_table("`Trainer(...)` arguments", "Trainer()", [(n, *_row("Trainer()", n, n in e_init, []))
                                                                  for n in t_init]))
    their_trainer, our_trainer = pl.Trainer(accelerator="cpu", logger=False), ember.Trainer(accelerator="cpu")
    out.append(_table("`Trainer` methods and properties", "Trainer", _compare(
        "Trainer", _public([*dir(pl.Trainer), *vars(their_trainer)]),
        lambda n: _member(pl.Trainer, their_trainer, n), lambda n: _member(ember.Trainer, our_trainer, n))))
    module_names = _public(set(dir(pl.LightningModule)) - set(dir(torch.nn.Module)) | set(vars(pl.LightningModule())))
    our_module = ember.Module()
    out.append(_table("`LightningModule` hooks, methods and properties (beyond `nn.Module`)", "LightningModule",
                      _compare("LightningModule", module_names,
                               lambda n: _member(pl.LightningModule, pl.LightningModule(), n),
                               lambda n: _member(ember.Module, our_module, n))))
    their_dm, our_dm = pl.LightningDataModule(), ember.LightningDataModule()
    out.append(_table("`LightningDataModule`", "LightningDataModule", _compare(
        "LightningDataModule", _public([*dir(pl.LightningDataModule), *vars(their_dm)]),
        lambda n: _member(pl.LightningDataModule, their_dm, n),
        lambda n: _member(ember.LightningDataModule, our_dm, n))))
    out.append(_table("`Callback` hooks", "Callback", _compare(
        "Callback", _public(dir(pl.Callback)), lambda n: inspect.getattr_static(pl.Callback, n),
        lambda n: inspect.getattr_static(ember.Callback, n) if hasattr(ember.Callback, n) else None)))
    for title, section, theirs, ours in (("`lightning.pytorch` top-level names", "lightning.pytorch", pl, ember),
                                         ("Callbacks (`lightning.pytorch.callbacks`)", "callbacks", plc, ec),
                                         ("Loggers (`lightning.pytorch.loggers`)", "loggers", pll, el),
                                         ("Profilers (`lightning.pytorch.profilers`)", "profilers", plp, ep)):
        out.append(_table(title, section, _compare(section, sorted(theirs.__all__), lambda n, m=theirs: getattr(m, n),
                                                   lambda n, m=ours: getattr(m, n, None))))
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    import accelerate
    import lightning

    print(INTRO.format(accelerate=accelerate.__version__, lightning=lightning.__version__))
    print("## Accelerate\n")
    print("".join(_accelerate_sections()))
    print("## Lightning\n")
    print("".join(_lightning_sections()), end="")


if __name__ == "__main__":
    main()
