"""Suite-wide: no test reads or writes the real default config of `ember config` / `ember launch`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_ember_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``EMBER_HOME`` for this process and ``XDG_CACHE_HOME`` for the children that the helpers start with the
    ``EMBER_*`` variables stripped: the default config file is then looked for under a scratch folder, never in
    ``~/.cache/ember``."""
    home = tmp_path_factory.mktemp("ember-home")
    saved = {k: os.environ.get(k) for k in ("EMBER_HOME", "XDG_CACHE_HOME")}
    os.environ["EMBER_HOME"] = str(home / "ember")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
