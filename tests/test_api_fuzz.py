"""Random arguments for ``Llama(...)``, ``create_completion`` and ``create_chat_completion``
(``tests/fuzz/api_gen.py``), run in child processes: each call returns a valid result or raises
ValueError / TypeError naming a parameter it changed; no crash, no hang, no other exception.
``scripts/fuzz_api.py`` runs the same property on many more calls; the regression cases below are calls
it found to crash (SIGSEGV) or to raise something else, each with what it gives now."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import api_gen

SEED = 20261203
CALLS = 400


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api_fuzz")
    api_gen.write_models(path)
    return path


def test_a_fixed_seed_sample_of_calls(root: Path) -> None:
    outcomes = list(api_gen.run_cases(SEED, list(range(CALLS)), root, batch=200, timeout=60))
    assert sorted(o.index for o in outcomes) == list(range(CALLS))
    bad = [f"{o.verdict}: {api_gen.make_case(SEED, o.index, root).describe()[:300]}\n    {o.detail[:300]}"
           for o in outcomes if o.verdict not in ("ok", "ValueError", "TypeError")]
    assert not bad, f"{len(bad)} calls broke the property:\n" + "\n".join(bad[:20])
    verdicts = Counter(o.verdict for o in outcomes)
    targets = Counter(api_gen.make_case(SEED, o.index, root).target for o in outcomes if o.verdict == "ok")
    print(dict(verdicts), dict(targets))
    # the sample reaches every outcome, and valid results of every kind of call
    assert min(verdicts["ok"], verdicts["ValueError"], verdicts["TypeError"]) > CALLS // 10, verdicts
    assert min(targets["init"], targets["completion"], targets["chat"]) >= 10, targets


def test_regressions(root: Path) -> None:
    expected = api_gen.regression_expectations(root)
    outcomes = list(api_gen.run_cases(api_gen.REGRESSIONS, list(range(len(expected))), root, timeout=60))
    wrong = []
    for o in sorted(outcomes, key=lambda o: o.index):
        verdict, fragment = expected[o.index]
        if o.verdict != verdict or fragment not in o.detail:
            case = api_gen.regression_case(o.index, root)
            wrong.append(f"{case.describe()[:200]}: {o.verdict} {o.detail[:200]!r}, expected {verdict} "
                         f"with {fragment!r}")
    assert len(outcomes) == len(expected)
    assert not wrong, "\n".join(wrong)


def test_the_harness_reports_a_crash_and_a_hang(root: Path) -> None:
    """A child that dies or stops answering identifies its case; the next child goes on."""
    indices = [0, api_gen.CRASH_PROBE, 1, api_gen.HANG_PROBE, 2]
    outcomes = {o.index: o for o in api_gen.run_cases(SEED, indices, root, timeout=3)}
    assert sorted(outcomes) == sorted(indices)
    assert outcomes[api_gen.CRASH_PROBE].verdict == "crash"
    assert outcomes[api_gen.CRASH_PROBE].detail.startswith("SIGABRT")
    assert outcomes[api_gen.HANG_PROBE].verdict == "hang"
    assert all(outcomes[i].verdict not in ("crash", "hang") for i in (0, 1, 2))


def test_cases_are_reproducible(root: Path) -> None:
    a = [api_gen.make_case(7, i, root).describe() for i in range(300)]
    b = [api_gen.make_case(7, i, root).describe() for i in range(300)]
    assert a == b
    targets = Counter(api_gen.make_case(7, i, root).target for i in range(300))
    assert set(targets) == {"init", "completion", "chat"}
    # every parameter of the three calls is reached
    changed = {(c.target, n) for i in range(3000) for c in [api_gen.make_case(7, i, root)] for n in c.changed}
    for target, params in api_gen.PARAMS.items():
        missing = {p.name for p in params} - {n for t, n in changed if t == target}
        assert not missing, (target, missing)


def test_judge() -> None:
    case = api_gen.Case(0, "completion", "llama", {"prompt": "hi", "top_k": "x"}, ["top_k"])
    assert api_gen.judge(case, None) == ("ok", "")
    assert api_gen.judge(case, TypeError("top_k must be an integer"))[0] == "TypeError"
    assert api_gen.judge(case, ValueError("something else"))[0] == "unnamed"
    assert api_gen.judge(case, KeyError("top_k"))[0] == "other"
