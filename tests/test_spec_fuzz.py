"""Random wiring specs (strings and dicts, valid ones and near-misses; ``tests/fuzz/spec_gen.py``) on the
tiny models: each either applies or raises ActivationSpecError, never anything else; an applied one
round-trips through ``str(llm.wiring)``, ``to_dict()`` and a saved profile; a sample of them decodes to
finite logits. ``scripts/fuzz_specs.py`` runs the same property on many more specs."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import spec_gen as sg

from llama_rewire import Llama
from llama_rewire.errors import ActivationSpecError

KINDS = ["llama", "moe_shared", "gemma3", "mamba"]
PER_KIND = 375  # 1,500 specs in all
DECODE_EVERY = 10  # of the applied specs


@pytest.mark.parametrize("kind", KINDS)
def test_random_specs_apply_or_refuse(kind: str, tiny_llm: Callable[..., Llama], tmp_path: Path) -> None:
    llm = tiny_llm(kind)
    gen = sg.SpecGen(random.Random(f"spec-fuzz-{kind}"), sg.Shape.of(llm))
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for _ in range(PER_KIND):
        spec, how = gen.spec()
        out = sg.check_spec(llm, spec, tmp_path, decode=counts["applied"] % DECODE_EVERY == 0)
        counts[how] += 1
        counts["applied" if out.applied else "refused"] += 1
        counts["dict" if isinstance(spec, dict) else "str"] += 1
        counts["decoded"] += out.decoded
        problems += [f"{spec!r}: {p}" for p in out.problems]
    assert not problems, f"{len(problems)} broken properties:\n" + "\n".join(problems[:20])
    # the generator reaches both sides of the property, in both forms
    assert counts["valid"] > PER_KIND // 3 and counts["mutant"] > PER_KIND // 5, counts
    assert counts["dict"] > PER_KIND // 4 and counts["str"] > PER_KIND // 4, counts
    assert counts["refused"] > PER_KIND // 5, counts
    assert counts["applied"] > (5 if kind == "mamba" else PER_KIND // 5), counts
    assert counts["decoded"] >= 1, counts
    # the model is still usable at its own wiring
    assert str(llm.wiring) == ""
    llm.eval([1, 2, 3])


def test_generator_is_deterministic() -> None:
    shape = sg.Shape(3, 4, 0, ("dense",))
    a = sg.SpecGen(random.Random(7), shape)
    b = sg.SpecGen(random.Random(7), shape)
    assert [repr(a.spec()) for _ in range(200)] == [repr(b.spec()) for _ in range(200)]


def test_check_spec_reports_an_other_exception(tiny_llm: Callable[..., Llama], tmp_path: Path) -> None:
    """The harness itself: a refusal is not a problem, a non-ActivationSpecError is."""
    llm = tiny_llm("llama")
    refused = sg.check_spec(llm, "0:relu3", tmp_path)
    assert not refused.applied and refused.refused and not refused.problems
    applied = sg.check_spec(llm, "0:gelu, 1-2:ffn_scale=0.5, -1:heads_off=[0,2]", tmp_path, decode=True)
    assert applied.applied and applied.decoded and not applied.problems

    class Boom:
        def set_wiring(self, spec: object) -> None:
            if spec is not None:
                raise KeyError(spec)

    other = sg.check_spec(Boom(), "x", tmp_path)
    assert other.problems and other.problems[0].startswith("set_wiring raised KeyError")


@pytest.mark.parametrize("spec", ["0:relu@1e40", {"0": {"name": "gelu", "threshold": 1e39}},
                                  {"*": {"act": {"dense": "sigmoid@3.5e38"}}}])
def test_a_threshold_beyond_float32_is_refused(spec: object, tiny_llm: Callable[..., Llama]) -> None:
    """Found by the fuzzer: a finite threshold too large for float32 passes the Python checks and the
    native wiring then raises a plain ValueError ("activation parameter is NaN, infinite or out of
    range"), not an ActivationSpecError."""
    llm = tiny_llm("llama")
    with pytest.raises(ActivationSpecError, match="threshold"):
        llm.set_wiring(spec)
    assert str(llm.wiring) == ""
