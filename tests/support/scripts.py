"""The project's scripts (bench/, scripts/) loaded as modules, for tests of their pure parts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["REPO", "load_script"]

REPO = Path(__file__).resolve().parents[2]


def load_script(relative: str, name: str) -> ModuleType:
    """``REPO/relative`` run as module ``name`` (registered in ``sys.modules``: dataclasses
    look their module up). The environment is put back as it was: a script may set
    variables at import (bench/scale.py its namespace prefix) that the smoke tests' own
    runs of other scripts would otherwise inherit."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    environment = dict(os.environ)
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return module
