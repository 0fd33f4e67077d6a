"""``accelerator.profile()``: torch's profiler, configured by Accelerate's ``ProfileKwargs``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember._errors import unknown_value

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.utils import ProfileKwargs

_ACTIVITIES = ("cpu", "cuda", "xpu", "mtia")


@contextlib.contextmanager
def profile(self: Accelerator, profile_handler: ProfileKwargs | None = None) -> Iterator[Any]:
    """Profile the block with ``torch.profiler`` (options from ``ProfileKwargs``: the one given here, else the one
    passed in ``Accelerator(kwargs_handlers=[...])``); with ``output_trace_dir`` each process writes
    ``trace_rank{r}.json`` (Chrome trace) there when the block ends.

    >>> import os, tempfile, torch
    >>> from ember import Accelerator
    >>> from ember.utils import ProfileKwargs
    >>> accelerator = Accelerator(cpu=True)
    >>> out = tempfile.mkdtemp()
    >>> with accelerator.profile(ProfileKwargs(activities=["cpu"], output_trace_dir=out)) as prof:
    ...     _ = torch.ones(64, 64) @ torch.ones(64, 64)
    >>> "aten::mm" in prof.key_averages().table(), os.listdir(out)
    (True, ['trace_rank0.json'])
    """
    import torch.profiler as tp

    from ember.utils import ProfileKwargs

    options = (profile_handler or self.profile_handler or ProfileKwargs()).to_kwargs()
    names = options.pop("activities") or (["cpu", "cuda"] if self.device.type == "cuda" else ["cpu"])
    bad = [a for a in names if a not in _ACTIVITIES]
    if bad:
        raise unknown_value("ProfileKwargs(activities)", bad[0], _ACTIVITIES)
    schedule = options.pop("schedule_option")
    trace_dir = options.pop("output_trace_dir")
    kwargs = {"activities": [getattr(tp.ProfilerActivity, a.upper()) for a in names],
              "schedule": tp.schedule(**schedule) if schedule else None, **options}
    with tp.profile(**kwargs) as prof:
        yield prof
    if trace_dir is not None:
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(trace_dir) / f"trace_rank{self.process_index}.json"))
