"""Figures recorded from llama-cpp-python and llama.cpp's tools, for the CPU kernel path of this machine.

What llama.cpp computes depends on the CPU's kernels (AVX2, AVX-512 and AMX machines round and sum in
other orders), so every recording says which path made it (``cpu_path``, as ``system_info()`` names it).
The ones in tests/data (and tests/data/cpu-paths/<path>/ for further paths) are used where the path is
the same; elsewhere the comparison is made against a recording of the same peers on this machine, made
once by scripts/record_references.py (it builds
llama-cpp-python 0.3.36 and llama-perplexity here, about 15 minutes, and keeps the result in the
llama-rewire cache).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from llama_rewire import system_info

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(ROOT / "scripts"))

import record_references  # noqa: E402


def committed(name: str) -> dict[str, Any]:
    """The recording in tests/data, whatever CPU path made it (for what no kernel changes: tokenizers)."""
    return json.loads((DATA / name).read_text())  # type: ignore[no-any-return]


@functools.cache
def reference(name: str) -> dict[str, Any]:
    """The recording `name` made on this machine's CPU path: the committed one of this path if there is
    one, else this machine's own (recorded now if missing)."""
    here = system_info()["cpu_path"]
    kept = record_references.committed_dir(here) / name
    if kept.exists():
        data: dict[str, Any] = json.loads(kept.read_text())
        assert data.get("cpu_path") == here, f"{kept} was recorded on {data.get('cpu_path')}"
        return data
    local = record_references.local_dir(here)
    if not all((local / f).exists() for f in record_references.FILES):
        print(f"\nrecording the peers' figures for this CPU path ({here}); tests/data holds "
              f"{committed(name).get('cpu_path')}'s", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "record_references.py")], check=True,
                       timeout=3600)
    mine = json.loads((local / name).read_text())
    assert mine.get("cpu_path") == here, f"{local / name} was recorded on {mine.get('cpu_path')}"
    return mine  # type: ignore[no-any-return]
