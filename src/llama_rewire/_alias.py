"""``import llama_cpp`` resolving to llama-rewire: :func:`install_as_llama_cpp`.

After ``llama_rewire.install_as_llama_cpp()``, ``llama_cpp`` is this package and ``llama_cpp.X`` (for
every submodule ``X`` of llama-cpp-python that llama-rewire has: ``llama``, ``llama_chat_format``,
``llama_cpp``, ``server.app``, ...) is the module object ``llama_rewire.X``: the same object, loaded once,
whichever name imports it first. A finder at the front of ``sys.meta_path`` answers the ``llama_cpp.*``
names (so an installed llama-cpp-python is not imported), lazily: a submodule is imported when asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

ALIAS = "llama_cpp"
PACKAGE = __name__.rpartition(".")[0]  # "llama_rewire"


class _ExistingModuleLoader(importlib.abc.Loader):
    """Hands the import system a module that is already imported, and runs nothing."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.own_spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        # The module ran once, under its own name. The import system keeps the attributes it already has
        # (__name__, __package__, __file__) but sets __spec__ to the alias's: put its own back, or the
        # relative imports it runs later would see __spec__.parent != __package__ (an ImportWarning).
        module.__spec__ = self.own_spec


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``llama_cpp`` and ``llama_cpp.X.Y`` to ``llama_rewire`` and ``llama_rewire.X.Y``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = PACKAGE + fullname[len(ALIAS) :]
        module = sys.modules.get(real)
        if module is None:
            try:
                if importlib.util.find_spec(real) is None:
                    return None  # llama-rewire has no such module: "No module named 'llama_cpp.X'"
            except ModuleNotFoundError:
                return None
            module = importlib.import_module(real)
        is_package = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(
            fullname, _ExistingModuleLoader(module), is_package=is_package
        )


def _finder() -> AliasFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, AliasFinder)), None)


def install_as_llama_cpp() -> None:
    """Make ``import llama_cpp`` (and ``import llama_cpp.X``) give llama-rewire's modules.

    Call it before anything imports ``llama_cpp``; calling it again does nothing. A llama-cpp-python
    already imported in this process cannot be replaced (objects made from it would mix with ours):
    that raises ``RuntimeError``.
    """
    package = sys.modules[PACKAGE]
    loaded = sys.modules.get(ALIAS)
    if loaded is not None and loaded is not package:
        raise RuntimeError(
            f"llama_cpp is already imported from {getattr(loaded, '__file__', None) or loaded!r}: call "
            "llama_rewire.install_as_llama_cpp() before anything imports llama_cpp"
        )
    if _finder() is None:
        sys.meta_path.insert(0, AliasFinder())
    sys.modules[ALIAS] = package  # submodules are aliased when first imported under llama_cpp.*


def uninstall_as_llama_cpp() -> None:
    """Undo :func:`install_as_llama_cpp`: ``llama_cpp`` is looked up as usual again."""
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    package = sys.modules.get(PACKAGE)
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        real = sys.modules.get(PACKAGE + name[len(ALIAS) :])
        if sys.modules[name] is real or sys.modules[name] is package:
            del sys.modules[name]
