"""Package attributes imported on first use (PEP 562), so that ``pixelwise --help`` and a mistyped flag answer
without loading torch: a package lists what it exports from each of its submodules."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` that import ``exports`` (relative submodule -> the names
    it exports, e.g. ``{".dense_crf": ["dense_crf"]}``) when a name is first read; the value is then kept in the
    package, so later reads are plain attribute reads."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in home:  # a submodule, which the package imported eagerly before (``pixelwise.data.io``)
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__
