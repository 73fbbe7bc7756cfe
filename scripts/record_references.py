"""Record, on this machine, every figure the tests compare against that depends on the CPU's kernels.

Greedy text, seeded draws, logprobs, embeddings and perplexities computed by llama.cpp differ between
CPU kernel paths (AVX2, AVX-512, AMX: other kernels round and sum differently). The figures committed in
``tests/data`` say which path recorded them (``cpu_path``, as ``llama_rewire.system_info()`` names it);
recordings of further paths are committed in ``tests/data/cpu-paths/<path>/`` (AVX-512 and AMX Xeons
are kept both). On a machine with a path not committed the tests compare against a recording made
there instead, which this script writes (the tests run it themselves when it is missing)::

    python scripts/record_references.py            # into the llama-rewire cache, for this CPU path
    python scripts/record_references.py --commit   # into tests/data, for a CPU path the suite keeps

It builds the peers on this machine (scripts/peers.py): llama-cpp-python 0.3.36 from its sdist with the
AMX fix (about 10 minutes), whose recording scripts then run in its own environment, and llama.cpp's
``llama-perplexity`` from our patched tree. Run it with the interpreter that has llama_rewire installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
COMMITTED = ROOT / "tests" / "data"
SAMPLE = ROOT / "src" / "llama_rewire" / "data" / "sample.txt"
DEFAULT_VENV = ROOT / "benchmarks" / ".venv-lcpp"
LCPP_FILES = {
    "llama_cpp_python_reference.json": "record_llama_cpp_python.py",
    "llama_cpp_python_api_reference.json": "record_llama_cpp_python_api.py",
}
PERPLEXITY_FILE = "llama_perplexity_reference.json"
FILES = (*LCPP_FILES, PERPLEXITY_FILE)
# llama-perplexity over the packaged sample text: 8 windows of 128 tokens, 2 threads, batch 128
PERPLEXITY_ARGS = ("-c", "128", "-t", "2", "-b", "128", "--chunks", "8")
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def machine() -> dict[str, str]:
    from llama_rewire import system_info

    info = system_info()
    return {"cpu_path": info["cpu_path"], "cpu_model": info["cpu_model"]}


def slug(cpu_path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cpu_path)


def local_dir(cpu_path: str) -> Path:
    """Where the recordings of one CPU path go: the llama-rewire cache, one folder per path."""
    from llama_rewire.models import cache_dir

    return Path(cache_dir()) / "references" / slug(cpu_path)


def committed_dir(cpu_path: str) -> Path:
    """Where a committed recording of one CPU path lies: tests/data itself for the path its files were
    recorded on, tests/data/cpu-paths/<path> for any other path recorded and committed."""
    main = COMMITTED / FILES[0]
    if not main.exists() or json.loads(main.read_text()).get("cpu_path") == cpu_path:
        return COMMITTED
    return COMMITTED / "cpu-paths" / slug(cpu_path)


def record_perplexity(model: Path) -> dict[str, Any]:
    tool = peers.build_tool("llama-perplexity")
    figures = {}
    for flash_attn in ("on", "off"):
        cmd = [str(tool), "-m", str(model), "-f", str(SAMPLE), *PERPLEXITY_ARGS, "-fa", flash_attn]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        found = _FINAL.search(run.stdout + run.stderr)
        if found is None:
            raise SystemExit(f"llama-perplexity printed no final estimate:\n{run.stderr[-2000:]}")
        figures[flash_attn] = [float(found.group(1)), float(found.group(2))]
    import hashlib

    return {"tool": "llama-perplexity", "args": [*PERPLEXITY_ARGS], "model": model.name,
            "sample_sha256": hashlib.sha256(SAMPLE.read_bytes()).hexdigest(), "ppl": figures}  # fmt: skip


def stamp(path: Path, where: dict[str, str]) -> None:
    data = json.loads(path.read_text())
    data = {**where, **{k: v for k, v in data.items() if k not in where}}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def record(out: Path, venv: Path = DEFAULT_VENV) -> Path:
    """Write every file of FILES into out (via a temporary folder: a failure leaves nothing half-written)."""
    from llama_rewire.models import fetch

    where = machine()
    python = Path(os.environ.get("LLAMA_REWIRE_LCPP_PYTHON") or peers.build_lcpp(venv))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for name, script in LCPP_FILES.items():
            target = Path(tmp) / name
            flag = "--output" if script == "record_llama_cpp_python.py" else "-o"
            peers.echo_run([python, SCRIPTS / script, flag, target], cwd=ROOT)
            stamp(target, where)
        ppl = Path(tmp) / PERPLEXITY_FILE
        ppl.write_text(json.dumps(record_perplexity(fetch("smollm2", progress=False)), indent=1) + "\n")
        stamp(ppl, where)
        for name in FILES:
            os.replace(Path(tmp) / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", action="store_true",
                        help="write into tests/data (tests/data/cpu-paths/<path> for a second path) instead "
                             "of the cache")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the llama-cpp-python environment")
    args = parser.parse_args(argv)
    here = machine()["cpu_path"]
    out = committed_dir(here) if args.commit else local_dir(here)
    print(record(out, args.venv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
