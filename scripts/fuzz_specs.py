"""Apply N random wiring specs (``tests/fuzz/spec_gen.py``) to the tiny models and count the outcomes.

    python scripts/fuzz_specs.py                   # 10,000 specs, seed 0, every tiny kind below
    python scripts/fuzz_specs.py -n 2000 --seed 3 --kinds llama,mamba --decode-every 20

Every spec either applies or raises ActivationSpecError; an applied one must round-trip through
``str(llm.wiring)``, ``to_dict()`` and a saved profile, and every ``--decode-every``-th applied one is
evaluated (finite logits, unless an expression of the wiring may
itself give nan / inf: log, sqrt, /, ^, exp; those are counted apart). Exit status 1 when any property broke.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
sys.path.insert(0, str(ROOT / "tests"))

import spec_gen as sg  # noqa: E402
import tiny_models  # noqa: E402

from llama_rewire import Llama  # noqa: E402

KINDS = ("llama", "moe_shared", "gemma3", "mamba")
OPTIONS = {"n_ctx": 64, "logits_all": True, "n_threads": 2, "verbose": False}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10_000, help="specs to try (spread over the kinds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--decode-every", type=int, default=50, help="evaluate every k-th applied spec")
    p.add_argument("--examples", type=int, default=5, help="examples shown per failure kind")
    args = p.parse_args()

    kinds = [k for k in args.kinds.split(",") if k]
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    others: dict[str, list[str]] = {}
    trips: list[str] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        llms = {}
        for kind in kinds:
            path = tmp / f"{kind}.gguf"
            tiny_models.WRITERS[kind](path)
            llms[kind] = Llama(str(path), **OPTIONS)
        gens = {kind: sg.SpecGen(rng, sg.Shape.of(llm)) for kind, llm in llms.items()}
        applied = 0
        for i in range(args.n):
            kind = kinds[i % len(kinds)]
            spec, how = gens[kind].spec()
            decode = applied % args.decode_every == 0
            out = sg.check_spec(llms[kind], spec, tmp, decode=decode)
            counts["tried"] += 1
            counts[f"tried {how}"] += 1
            if out.applied:
                applied += 1
                counts["applied"] += 1
                counts[f"applied {how}"] += 1
                counts["decoded"] += out.decoded
                counts["decoded non-finite, partial expr"] += out.partial_nonfinite
            elif out.refused:
                counts["refused"] += 1
            for problem in out.problems:
                line = f"[{kind}] {spec!r}: {problem}"
                if problem.startswith("set_wiring raised"):
                    counts["other exceptions"] += 1
                    name = problem.split()[2].rstrip(":")
                    others.setdefault(name, []).append(line)
                else:
                    counts["round-trip / eval failures"] += 1
                    trips.append(line)
        for llm in llms.values():
            llm.close()

    print(f"{counts['tried']} specs in {time.time() - t0:.1f}s over {', '.join(kinds)} (seed {args.seed})")
    for key in ("tried", "tried valid", "tried mutant", "applied", "applied valid", "applied mutant",
                "refused", "other exceptions", "round-trip / eval failures", "decoded",
                "decoded non-finite, partial expr"):
        print(f"  {key:28s} {counts[key]}")
    for name, lines in sorted(others.items()):
        print(f"other exception {name}: {len(lines)}")
        for line in lines[: args.examples]:
            print("   ", line)
    if trips:
        print(f"round-trip / eval failures: {len(trips)}")
        for line in trips[: args.examples * 4]:
            print("   ", line)
    return 1 if others or trips else 0


if __name__ == "__main__":
    sys.exit(main())
