"""Which of ggml's backend modules this process loads, in the portable build.

The portable wheel carries ggml's CPU backend once per instruction-set level, as modules next to
``_core`` (``libllama-rewire-ggml-cpu-<variant>.so``: ``x64``, ``sse42``, ``haswell``, ``skylakex``,
``icelake``, ``sapphirerapids``, ...; on ARM ``armv8.0_1`` ... ``armv9.2_2``), and the other backends built
as modules (RPC, and a GPU backend where the wheel has one). At import, each CPU module is asked for its
score on this machine (0 where the machine lacks its instructions) and the best one is loaded; every
other backend module is loaded as well. Modules are looked for in the package directory only, never on
a search path, so no other copy of ggml can be picked up.

``LLAMA_REWIRE_CPU_VARIANT=<variant>`` loads that CPU variant instead (to compare kernels, or to rule one
out); one that cannot run on this machine is an ImportError, not an illegal instruction. The native
build (``pip install .`` from source: everything static, compiled for this CPU) has nothing to load.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import _core

PREFIX = "libllama-rewire-ggml-"
CPU_PREFIX = PREFIX + "cpu-"
VARIANT_ENV = "LLAMA_REWIRE_CPU_VARIANT"
# ggml's CMake builds backend modules as MODULE libraries: ".so" on Linux and macOS alike
SUFFIX = ".dll" if sys.platform == "win32" else ".so"
_SHARED = {PREFIX + "base" + SUFFIX, PREFIX.rstrip("-") + SUFFIX}  # ggml itself, linked, not loaded


@dataclass
class Loaded:
    """What was loaded: ``build`` is ``"portable"`` or ``"native"``; ``cpu_variant`` the CPU module
    picked (``"native"`` in the native build); ``cpu_scores`` every CPU module's score on this machine;
    ``modules`` the backends registered from modules, by name."""

    build: str
    cpu_variant: str
    cpu_scores: dict[str, int] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)


def _variant(path: Path) -> str:
    return path.name[len(CPU_PREFIX) : -len(SUFFIX)]


def load(directory: Path | None = None) -> Loaded:
    """Load the backend modules found in ``directory`` (that of ``_core``): the best CPU variant, or
    the one ``LLAMA_REWIRE_CPU_VARIANT`` names, and every other backend."""
    if not _core.BACKEND_DL:
        return Loaded("native", "native")
    where = directory if directory is not None else Path(_core.__file__).resolve().parent
    found = sorted(p for p in where.glob(PREFIX + "*" + SUFFIX) if p.name not in _SHARED)
    cpus = [p for p in found if p.name.startswith(CPU_PREFIX)]
    others = [p for p in found if not p.name.startswith(CPU_PREFIX)]
    if not cpus:
        raise ImportError(f"llama_rewire: no CPU backend module ({CPU_PREFIX}*{SUFFIX}) in {where}")
    scores = {_variant(p): int(_core.backend_score(str(p))) for p in cpus}
    forced = os.environ.get(VARIANT_ENV, "").strip()
    if forced:
        if forced not in scores:
            raise ImportError(
                f"llama_rewire: {VARIANT_ENV}={forced!r} is not a CPU variant of this build "
                f"(it has {', '.join(sorted(scores))})"
            )
        if scores[forced] == 0:
            raise ImportError(
                f"llama_rewire: {VARIANT_ENV}={forced!r} needs instructions this CPU lacks "
                f"(variants it runs: {', '.join(v for v, s in sorted(scores.items()) if s > 0) or 'none'})"
            )
        best = forced
    else:
        best = max(scores, key=lambda v: (scores[v], v))
        if scores[best] == 0:
            raise ImportError(
                f"llama_rewire: none of this build's CPU variants runs on this CPU "
                f"({', '.join(sorted(scores))})"
            )
    loaded = Loaded("portable", best, scores)
    loaded.modules.append(_core.backend_load(str(where / f"{CPU_PREFIX}{best}{SUFFIX}")))
    for path in others:
        loaded.modules.append(_core.backend_load(str(path)))
    return loaded


LOADED = load()  # at the package's import, before any model or device is asked for
