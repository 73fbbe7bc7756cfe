"""Which kernels run here: llama.cpp's system-info string and the CPU features ggml detected.

A bug report (or a comparison of results between two machines) should say which CPU path computed them:
AVX2, AVX-512 and AMX machines run different matmul kernels, which round differently, so greedy text and
logits to the last bit can differ between them. ``llama-rewire info --system`` prints the same.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from . import _backends, _core


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_path(features: dict[str, str] | None = None) -> str:
    """The CPU kernel path: the machine and every feature the CPU backend was built for and detected, in
    its order, e.g. ``x86_64 SSE3+SSSE3+AVX+AVX2+F16C+FMA+...+AMX_INT8+REPACK``. Results that depend on
    kernels (greedy text, logits to the last bit) are comparable between machines with the same path."""
    feats = features if features is not None else dict(_core.cpu_features())
    on = [name for name, value in feats.items() if value not in ("", "0")]
    return f"{platform.machine()} {'+'.join(on) or 'generic'}"


def system_info() -> dict[str, Any]:
    """llama.cpp's system-info string (``llama_print_system_info``), the CPU features the CPU backend
    reports, its extra buffer types (where ``use_extra_bufts=True`` repacks weights: ``AMX``,
    ``CPU_REPACK``), the CPU path name of :func:`cpu_path`, the processor's model name, whether llama.cpp
    can offload layers (``gpu_offload``: also true for the RPC backend alone) and the backends' devices
    (``devices``: name, description and kind, ``"cpu"``, ``"gpu"``, ``"igpu"`` or ``"accel"``).

    ``build`` is ``"portable"`` for the wheel that carries the CPU backend for every instruction-set
    level, ``"native"`` for a build from source for this CPU; ``cpu_variant`` names the CPU backend
    variant the portable build picked (``"haswell"``, ``"sapphirerapids"``, ...; ``"native"`` otherwise)
    and ``cpu_variants`` every variant's score on this machine (0: it cannot run here)."""
    features = dict(_core.cpu_features())
    loaded = _backends.LOADED
    return {
        "build": loaded.build,
        "cpu_variant": loaded.cpu_variant,
        "cpu_variants": dict(loaded.cpu_scores),
        "system_info": _core.system_info().strip(),
        "cpu_features": features,
        "cpu_extra_buffer_types": list(_core.cpu_extra_buffer_types()),
        "cpu_path": cpu_path(features),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "gpu_offload": bool(_core.supports_gpu_offload()),
        "devices": [{"name": n, "description": d, "kind": k} for n, d, k in _core.backend_devices()],
    }
