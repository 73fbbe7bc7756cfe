"""Render hostile and random chat templates from GGUF metadata in child processes; summarise the outcomes.

    python scripts/fuzz_templates.py                   # the hostile list plus 200 random templates
    python scripts/fuzz_templates.py -n 2000 --seed 3 --jsonl out.jsonl
    python scripts/fuzz_templates.py -n 0 --direct     # the hostile list, rendered without a GGUF

The templates come from ``tests/fuzz/template_gen.py``: every named hostile shape (recursion, deep
nesting, self-containing values, endless loops, huge allocations) and ``-n`` random combinations of
the same blocks. Each is written into a copy of the tiny llama test model as ``tokenizer.chat_template``
and used by ``Llama(path).create_chat_completion`` in a child process with a time limit and an
address-space limit (``--direct``: ``_core.ChatTemplates`` on the text, faster). A case passes when the
child renders the template or raises a ``ValueError``; a death by signal, a timeout or another exception
is a failure, listed at the end with its template.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import gguf_mutate as gm
import template_gen as tg

CHILD = textwrap.dedent("""
    import json, resource, sys
    mem = int(sys.argv[2])
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"}]
    try:
        if sys.argv[3] == "direct":
            from llama_rewire import _core
            _core.ChatTemplates(None, open(sys.argv[1]).read()).apply(json.dumps(messages))
        else:
            from llama_rewire import Llama
            llm = Llama(sys.argv[1], n_ctx=256, verbose=False)
            llm.create_chat_completion(messages, max_tokens=1)
        print(json.dumps({"outcome": "ok"}))
    except ValueError as e:
        print(json.dumps({"outcome": "ValueError", "limit": "resource limit" in str(e)}))
    except Exception as e:
        print(json.dumps({"outcome": "other", "error": f"{type(e).__name__}: {e}"[:300]}))
""")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200, help="random templates besides the hostile list")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hostile", action="store_true", help="leave out the named hostile templates")
    p.add_argument("--direct", action="store_true", help="render the text with _core.ChatTemplates, no GGUF")
    p.add_argument("-j", "--jobs", type=int, default=2, help="children in parallel")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--mem-gib", type=float, default=4.0, help="each child's RLIMIT_AS (0: none)")
    p.add_argument("--jsonl", default="", help="write one JSON line per case here")
    return p.parse_args()


def _run(name: str, template: str, args: argparse.Namespace, workdir: Path, base: Path) -> dict[str, object]:
    if args.direct:
        path = workdir / f"{name}.jinja"
        path.write_text(template)
    else:
        path = tg.write_with_template(base, template, workdir / f"{name}.gguf")
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(path), str(int(args.mem_gib * (1 << 30))),
                            "direct" if args.direct else "gguf"],
                           capture_output=True, text=True, timeout=args.timeout, check=False)
        lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
        if p.returncode != 0 or not lines:
            out: dict[str, object] = {"outcome": f"died (rc {p.returncode})", "stderr": p.stderr[-300:]}
        else:
            out = json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        out = {"outcome": "timeout"}
    finally:
        path.unlink(missing_ok=True)
    out.update(name=name, seconds=round(time.monotonic() - t0, 2))
    return out


def main() -> int:
    args = _parse()
    cases = [] if args.no_hostile else [(h.name, h.template) for h in tg.HOSTILE]
    cases += [(f"random_{args.seed}_{i}", t) for i, t in enumerate(tg.random_templates(args.seed, args.n))]
    templates = dict(cases)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = gm.base_path("llama", workdir)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: _run(c[0], c[1], args, workdir, base), cases))
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    counts = Counter(str(r["outcome"]) + (" (a resource limit)" if r.get("limit") else "") for r in results)
    print(f"{len(results)} templates: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    slowest = max(results, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
    print(f"slowest: {slowest['name']} ({slowest['seconds']} s)")
    bad = [r for r in results if r["outcome"] not in ("ok", "ValueError")]
    for r in bad:
        print(f"FAIL {r['name']}: {r['outcome']} {r.get('error', r.get('stderr', ''))}\n  "
              f"{templates[str(r['name'])][:200]!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
