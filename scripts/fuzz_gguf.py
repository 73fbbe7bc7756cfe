"""Load single-mutation GGUF files in child processes and summarise what kills the process.

    python scripts/fuzz_gguf.py -n 0 --seed 0                      # every tiny-model case
    python scripts/fuzz_gguf.py -n 200 --kinds kv --smollm2 100    # a sample, plus SmolLM2
    python scripts/fuzz_gguf.py --bases llama --only llama.block_count --jsonl out.jsonl

The cases come from ``tests/fuzz/gguf_mutate.py``.  ``-n`` draws that many of the tiny-model
cases (after a shuffle with ``--seed``; 0 = all); ``--smollm2 K`` adds K metadata-only cases of
the real SmolLM2 file.  Each case's verdict goes to ``--jsonl`` when given; the summary groups
the deaths by the place that aborted (ggml's ``file:line: message``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

import gguf_mutate as gm


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=0, help="tiny-model cases to run (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bases", default=",".join(gm.TINY_BASES), help="comma-separated tiny bases ('' none)")
    p.add_argument("--kinds", default="kv,tensor", help="kv and/or tensor")
    p.add_argument("--only", default="", help="keep the cases whose key/tensor name contains this")
    p.add_argument("--smollm2", type=int, default=0, help="SmolLM2 KV cases to add (a sample; -1 all)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="children in parallel")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--mem-gib", type=float, default=8.0, help="each child's RLIMIT_AS (0: none)")
    p.add_argument("--workdir", default="", help="where bases and case files go (default: a temp dir)")
    p.add_argument("--keep-deaths", default="", help="copy the file of every death into this folder")
    p.add_argument("--backtrace", action="store_true", help="let ggml attach gdb on an abort (slow)")
    p.add_argument("--jsonl", default="", help="write one JSON line per case here")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args()


def _cases(args: argparse.Namespace, workdir: Path) -> list[tuple[gm.Image, gm.Mutation]]:
    rng = random.Random(args.seed)
    kinds = args.kinds.split(",")
    tiny: list[tuple[gm.Image, gm.Mutation]] = []
    for base in filter(None, args.bases.split(",")):
        img = gm.read_image(gm.base_path(base, workdir))
        tiny += [(img, m) for m in gm.all_mutations(img, base, kinds)]
    tiny = [c for c in tiny if args.only in c[1].target]
    rng.shuffle(tiny)
    if args.n > 0:
        tiny = tiny[: args.n]
    real: list[tuple[gm.Image, gm.Mutation]] = []
    if args.smollm2:
        img = gm.read_image(gm.base_path("smollm2", workdir))
        real = [(img, m) for m in gm.kv_mutations(img, "smollm2") if args.only in m.target]
        rng.shuffle(real)
        if args.smollm2 > 0:
            real = real[: args.smollm2]
    return tiny + real


def main() -> int:
    args = _parse()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fuzz_gguf_"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = _cases(args, workdir)
    keep = Path(args.keep_deaths) if args.keep_deaths else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    mem = int(args.mem_gib * (1 << 30))
    lock = threading.Lock()
    results: list[tuple[gm.Mutation, gm.Outcome]] = []
    jsonl = open(args.jsonl, "w") if args.jsonl else None  # noqa: SIM115

    def one(i: int, img: gm.Image, m: gm.Mutation) -> None:
        out, path = gm.run_case(img, m, workdir, args.timeout, mem, keep=True, backtrace=args.backtrace)
        died = out.verdict in ("signal", "timeout", "exit")
        if died and keep:
            shutil.copy(path, keep / f"{i:05d}_{m.base}_{m.kind}_{m.target}.gguf")
        Path(path).unlink()
        with lock:
            results.append((m, out))
            if jsonl:
                rec = {"base": m.base, "kind": m.kind, "target": m.target, "detail": m.detail,
                       **dataclasses.asdict(out), "where": out.where if died else ""}
                if not died:
                    rec["stderr_tail"] = ""
                jsonl.write(json.dumps(rec) + "\n")
                jsonl.flush()
            if not args.quiet and (died or len(results) % 100 == 0):
                tag = f"{out.verdict} {out.signal_name}".strip()
                extra = f"  {out.where}" if died else ""
                print(f"[{len(results)}/{len(cases)}] {tag}: {m.label}{extra}", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for f in [pool.submit(one, i, img, m) for i, (img, m) in enumerate(cases)]:
            f.result()
    if jsonl:
        jsonl.close()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    _summary(results, args)
    return 0


def _summary(results: list[tuple[gm.Mutation, gm.Outcome]], args: argparse.Namespace) -> None:
    verdicts = Counter(o.verdict for _, o in results)
    excs = Counter(o.exc_type for _, o in results if o.verdict == "exception")
    mle = sum(n for t, n in excs.items() if "ModelLoadError" in t)
    val = excs.get("ValueError", 0)
    other = {t: n for t, n in excs.items() if "ModelLoadError" not in t and t != "ValueError"}
    sigs = Counter(o.signal_name for _, o in results if o.verdict == "signal")
    print()
    print(f"seed {args.seed}, mem limit {args.mem_gib} GiB, timeout {args.timeout}s")
    print(f"cases tried:              {len(results)}")
    print(f"clean loads:              {verdicts['ok']}")
    print(f"ModelLoadError:           {mle}")
    print(f"ValueError (other):       {val}")
    print(f"other Python exceptions:  {sum(other.values())}  {dict(other) or ''}")
    print(f"deaths by signal:         {verdicts['signal']}  {dict(sigs) or ''}")
    print(f"non-zero exits:           {verdicts['exit']}")
    print(f"timeouts:                 {verdicts['timeout']}")
    groups: dict[str, list[tuple[gm.Mutation, gm.Outcome]]] = defaultdict(list)
    for m, o in results:
        if o.verdict in ("signal", "exit", "timeout"):
            groups[o.where].append((m, o))
    if not groups:
        return
    print("\ndeaths, by the place that aborted:")
    for where, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        frames = sorted({o.frame for _, o in items if o.frame})
        stages = sorted({o.stage for _, o in items})
        print(f"\n  {where}   [{len(items)} case(s); stage {'/'.join(stages)}]")
        if frames:
            print(f"    llama.cpp frame: {', '.join(frames[:3])}")
        for m, o in sorted(items, key=lambda x: x[0].label):
            print(f"    {o.signal_name or o.verdict:8} {m.label}")


if __name__ == "__main__":
    sys.exit(main())
