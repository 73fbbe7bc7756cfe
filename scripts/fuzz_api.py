"""Call ``Llama(...)``, ``create_completion`` and ``create_chat_completion`` with random arguments
(``tests/fuzz/api_gen.py``) in child processes, and count the outcomes.

    python scripts/fuzz_api.py                      # 6,000 calls, seed 0
    python scripts/fuzz_api.py -n 20000 --seed 3 -j 2
    python scripts/fuzz_api.py --show 1234          # one case of the seed, and what it gives

Every call must return a valid result or raise ValueError / TypeError naming one of the parameters it
changed; a crash (the child died), a hang (no answer within --timeout seconds), another exception type
or a message naming no parameter is a failure, reported with the case. Exit status 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

import api_gen

FAILURES = ("crash", "hang", "other", "unnamed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=6000, help="calls to make")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-j", "--jobs", type=int, default=2, help="children in parallel")
    p.add_argument("--batch", type=int, default=500, help="calls per child")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a call may take")
    p.add_argument("--mem-gib", type=float, default=8.0, help="each child's RLIMIT_AS (0: none)")
    p.add_argument("--show", type=int, default=None, help="print case N of the seed and run it alone")
    p.add_argument("--examples", type=int, default=10, help="failures shown per kind")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        api_gen.write_models(root)
        mem = int(args.mem_gib * (1 << 30))
        if args.show is not None:
            print(api_gen.make_case(args.seed, args.show, root).describe())
            for o in api_gen.run_cases(args.seed, [args.show], root, timeout=args.timeout, mem_limit=mem):
                print(f"  {o.verdict}: {o.detail}  ({o.seconds:.2f}s)")
            return 0
        t0 = time.time()
        jobs = max(1, args.jobs)
        parts = [list(range(i, args.n, jobs)) for i in range(jobs)]

        def run(part: list[int]) -> list[api_gen.Outcome]:
            return list(api_gen.run_cases(args.seed, part, root, batch=args.batch, timeout=args.timeout,
                                          mem_limit=mem))

        with ThreadPoolExecutor(jobs) as pool:
            outcomes = [o for part in pool.map(run, parts) for o in part]
        cases = {o.index: api_gen.make_case(args.seed, o.index, root) for o in outcomes}
    outcomes.sort(key=lambda o: o.index)
    verdicts = Counter(o.verdict for o in outcomes)
    targets = Counter(cases[o.index].target for o in outcomes)
    ok_by_target = Counter(cases[o.index].target for o in outcomes if o.verdict == "ok")
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(f"{len(outcomes)} calls in {time.time() - t0:.1f}s (seed {args.seed}, {jobs} children at a time, "
          f"timeout {args.timeout:g}s, RLIMIT_AS {args.mem_gib:g} GiB)")
    print(f"  calls tried               {len(outcomes)}  "
          f"({', '.join(f'{t} {n}' for t, n in sorted(targets.items()))})")
    print(f"  ValueError naming a param {verdicts['ValueError']}")
    print(f"  TypeError naming a param  {verdicts['TypeError']}")
    print(f"  ok (valid result)         {verdicts['ok']}  "
          f"({', '.join(f'{t} {n}' for t, n in sorted(ok_by_target.items()))})")
    print(f"  crashes                   {verdicts['crash']}")
    print(f"  hangs                     {verdicts['hang']}")
    print(f"  other exceptions          {verdicts['other']}")
    print(f"  messages naming no param  {verdicts['unnamed']}")
    print(f"  slowest call              {slowest.seconds:.2f}s (#{slowest.index})")
    failed = [o for o in outcomes if o.verdict in FAILURES]
    for kind in FAILURES:
        shown = [o for o in failed if o.verdict == kind][: args.examples]
        for o in shown:
            print(f"{kind}: {cases[o.index].describe()[:400]}\n    {o.detail[:400]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
