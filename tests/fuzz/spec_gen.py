"""Seeded random wiring specs, as strings and as dicts: valid ones built from the grammar of
``llama_rewire.wiring`` (layer keys, activations with parameters / thresholds / expressions of x, and
every knob), and near-misses of them (a character deleted, inserted or swapped, out-of-range numbers,
nan / inf, unbalanced brackets, unknown names, wrong types in dicts).

Used by ``tests/test_spec_fuzz.py`` and ``scripts/fuzz_specs.py``::

    gen = SpecGen(random.Random(0), Shape.of(llm))
    spec, kind = gen.spec()          # kind: "valid" or "mutant"
    outcome = check_spec(llm, spec, tmp_dir, decode=True)
"""

from __future__ import annotations

import random
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llama_rewire.errors import ActivationSpecError
from llama_rewire.wiring.activations import NAMES, PARAMS
from llama_rewire.wiring.expr import BINARY, UNARY
from llama_rewire.wiring.knobs import KNOBS, SCOPES, SKIPS

TOKENS = [1, 2, 3]
BAD_NUMBERS = ["nan", "inf", "-inf", "1e40", "-1e400", "1e309", "NaN", "+inf", "0x10", "1_0", "", "--1",
               "1e", ".", "-", "9" * 30]
UNKNOWN_NAMES = ["relu3", "gelu_fast", "Swish2", "sigmoidx", "foo", "x_", "xx", "act", "skip", "default2",
                 "tan", "log2", "pow", "max3", "X"]
# dict values of the wrong type
WRONG_TYPES: list[Any] = [None, [], [1, 2], {}, {"x": 1}, 1.5, 0, True, b"relu", ("relu",), float("nan"),
                          float("inf"), 1e40, -1, [[0]], ["a"], {"name": None}, {"name": 3}, {1: 2}, set()]


@dataclass(frozen=True)
class Shape:
    """What the generator aims the numbers at: layers, heads (0: no attention), experts (0: dense)."""

    n_layer: int
    n_head: int
    n_expert: int
    scopes: tuple[str, ...] = SCOPES  # the FFN scopes some layer has

    @staticmethod
    def of(llm: Any) -> Shape:
        infos = llm.layout
        return Shape(len(infos), max(i.n_head if i.attn else 0 for i in infos),
                     max(i.n_expert for i in infos),
                     tuple(s for s in SCOPES if any(i.has_scope(s) for i in infos)))

    def fits(self, knob: str) -> bool:
        """Whether some layer of the model takes this knob (the generator mostly picks those)."""
        if knob in ("attn_scale", "heads_off"):
            return self.n_head > 0
        if knob in ("experts_used", "experts_off"):
            return self.n_expert > 0
        if knob.startswith("act."):
            return knob[4:] in self.scopes
        if knob in ("act", "ffn_scale"):
            return bool(self.scopes)
        return True


@dataclass
class SpecGen:
    rng: random.Random
    shape: Shape

    # ------------------------------------------------------------ numbers

    def _float(self, lo: float = -3.0, hi: float = 3.0) -> str:
        r = self.rng.random()
        if r < 0.05:
            return self.rng.choice(BAD_NUMBERS)
        if r < 0.15:
            return self.rng.choice(["0", "1", "-1", "0.5", "2", "1e-3", "1E2", ".5", "5.", "-0", "1e38"])
        v = self.rng.uniform(lo, hi)
        return self.rng.choice([f"{v:g}", f"{v:.3f}", repr(round(v, 6))])

    def _index(self, n: int) -> int:
        """Mostly in [0, n), sometimes just out of range or negative."""
        r = self.rng.random()
        if r < 0.08:
            return n + self.rng.randint(0, 3)
        if r < 0.12:
            return -self.rng.randint(1, 3)
        return self.rng.randrange(max(n, 1))

    # ------------------------------------------------------------ layer keys

    def layer_key(self) -> str:
        n = self.shape.n_layer
        r = self.rng.random()
        if r < 0.3:
            return "*"
        if r < 0.55:
            return str(self.rng.randint(-n, n - 1))
        if r < 0.6:
            return str(self.rng.choice([n, -n - 1, 99, -99]))
        a, b = sorted(self.rng.randint(0, n - 1) for _ in range(2))
        if self.rng.random() < 0.1:
            a, b = b, a  # may go backwards
        if self.rng.random() < 0.1:
            a, b = -n + a, b - n  # negative ends
        sep = self.rng.choice(["-", "..", " - ", " .. "])
        return f"{a}{sep}{b}"

    def dict_key(self) -> Any:
        r = self.rng.random()
        n = self.shape.n_layer
        if r < 0.2:
            return self.rng.randint(-n, n - 1)
        if r < 0.3:
            a = self.rng.randint(0, n - 1)
            return range(a, self.rng.randint(a, n))
        if r < 0.33:
            return self.rng.choice([None, 1.0, True, (0, 1), n, -n - 1])
        return self.layer_key()

    # ------------------------------------------------------------ activations

    def expression(self, depth: int = 0) -> str:
        r = self.rng.random()
        if depth >= 3 or r < 0.25:
            return self.rng.choice(["x", "x", "x", self._float(-2, 2).lstrip("-") or "1", "pi", "e"])
        if r < 0.55:
            op = self.rng.choice(["+", "-", "*", "*", "/", "^", "**"])
            right = self.expression(depth + 1)
            if op in ("^", "**"):
                right = self.rng.choice(["2", "3", "0.5", "-1", "x", right])
            return f"({self.expression(depth + 1)}{op}{right})" if self.rng.random() < 0.5 \
                else f"{self.expression(depth + 1)} {op} {right}"
        if r < 0.85:
            fn = self.rng.choice(list(UNARY))
            return f"{fn}({self.expression(depth + 1)})"
        if r < 0.95:
            fn = self.rng.choice(list(BINARY))
            return f"{fn}({self.expression(depth + 1)}, {self.expression(depth + 1)})"
        return f"clamp({self.expression(depth + 1)}, {self._float(-3, 0)}, {self._float(0, 3)})"

    def activation(self) -> str:
        r = self.rng.random()
        if r < 0.2:
            text = self.expression()
            if "x" not in text:
                text = f"x*{text}"
        else:
            name = self.rng.choice(NAMES)
            if name in PARAMS and self.rng.random() < 0.6:
                lo = 0.0 if name in ("elu", "softplus") else -2.0
                text = f"{name}({self._float(lo, 3)})"
            else:
                text = name
            if self.rng.random() < 0.1:
                text = text.upper() if self.rng.random() < 0.5 else text.capitalize()
        if self.rng.random() < 0.15:
            text += f"@{self._float(0, 0.2)}"
        return text

    def activation_value(self) -> Any:
        """An activation as a dict value: a string, or a dict with name / parameter / threshold / expr."""
        r = self.rng.random()
        if r < 0.6:
            return self.activation()
        if r < 0.75:
            d: dict[str, Any] = {"expr": self.expression()}
        else:
            name = self.rng.choice(NAMES)
            d = {"name": name}
            if name in PARAMS and self.rng.random() < 0.6:
                pname = self.rng.choice([PARAMS[name][0], "param"])
                d[pname] = self.rng.uniform(0 if name in ("elu", "softplus") else -2, 3)
        if self.rng.random() < 0.3:
            d["threshold"] = self.rng.choice([0.0, 0.01, 0.05, round(self.rng.uniform(0, 0.3), 4)])
        return d

    # ------------------------------------------------------------ knobs

    def _index_list(self, n: int) -> str:
        items: list[str] = []
        for _ in range(self.rng.randint(0, 3)):
            if self.rng.random() < 0.2 and n > 1:
                a = self.rng.randrange(n - 1)
                items.append(f"{a}-{self.rng.randint(a, n - 1)}")
            else:
                items.append(str(self._index(n)))
        return "[" + self.rng.choice([",", ", ", " ,"]).join(items) + "]"

    def knob(self) -> tuple[str, str]:
        """(knob name, value text) for the string form."""
        knob = self.rng.choice(KNOBS)
        if not self.shape.fits(knob) and self.rng.random() < 0.85:
            knob = self.rng.choice([k for k in KNOBS if self.shape.fits(k)])
        if knob.startswith("act"):
            return knob, self.activation()
        if knob == "skip":
            return knob, self.rng.choice([*SKIPS, *SKIPS, "ATTN", " ffn ", "both", "mlp"])
        if knob in ("attn_scale", "ffn_scale"):
            return knob, self._float(-2, 3)
        if knob == "heads_off":
            return knob, self._index_list(self.shape.n_head or 4)
        if knob == "experts_off":
            return knob, self._index_list(self.shape.n_expert or 4)
        r = self.rng.random()
        k = self.rng.choice(["default", "0", "-1", "1.5", "k"]) if r < 0.15 else str(self._index(
            max(self.shape.n_expert, 2)) + 1)
        return knob, k

    def knob_value(self, knob: str, text: str) -> Any:
        """The dict-form value of a string-form knob value (sometimes left a string)."""
        if knob.startswith("act"):
            return self.activation_value() if self.rng.random() < 0.5 else text
        if self.rng.random() < 0.3:
            return text
        if knob in ("heads_off", "experts_off"):
            items: list[Any] = []
            for raw in text.strip("[]").split(","):
                part = raw.strip()
                if not part:
                    continue
                if "-" in part[1:]:
                    items.append(part)  # a range stays a string
                else:
                    items.append(int(part))
            return items
        if knob in ("attn_scale", "ffn_scale"):
            try:
                return float(text)
            except ValueError:
                return text
        if knob == "experts_used" and text.lstrip("-").isdigit():
            return int(text)
        return text

    # ------------------------------------------------------------ whole specs

    def valid_string(self) -> str:
        entries = []
        for _ in range(self.rng.randint(1, 4)):
            if self.rng.random() < (0.45 if self.shape.scopes else 0.05):
                value = self.activation()
            else:
                knob, text = self.knob()
                value = f"{knob}={text}"
            if self.rng.random() < 0.15:
                entries.append(value)  # bare: every layer
            else:
                entries.append(f"{self.layer_key()}:{value}")
        return self.rng.choice([", ", ",", "; ", " , "]).join(entries)

    def valid_dict(self) -> dict[Any, Any]:
        spec: dict[Any, Any] = {}
        for _ in range(self.rng.randint(1, 3)):
            key = self.dict_key()
            if self.rng.random() < 0.35:
                spec[key] = self.activation_value()
                continue
            knobs: dict[str, Any] = {}
            for _ in range(self.rng.randint(1, 3)):
                knob, text = self.knob()
                if knob.startswith("act.") and self.rng.random() < 0.4:
                    knobs.setdefault("act", {})
                    if isinstance(knobs["act"], dict) and "name" not in knobs["act"] \
                            and "expr" not in knobs["act"]:
                        knobs["act"][knob[4:]] = self.activation_value()
                    continue
                knobs[knob] = self.knob_value(knob, text)
            spec[key] = knobs
        return spec

    def mutate_string(self, text: str) -> str:
        ops = ["delete", "insert", "swap", "replace_number", "unbalance", "unknown", "dup_sep", "junk"]
        for _ in range(self.rng.randint(1, 2)):
            op = self.rng.choice(ops)
            i = self.rng.randrange(len(text) + 1)
            if op == "delete" and text:
                i = min(i, len(text) - 1)
                text = text[:i] + text[i + 1:]
            elif op == "insert":
                text = text[:i] + self.rng.choice("()[],;:=@*-.x0123456789 aeE+/^_\"'\\\t\n\x00é") + text[i:]
            elif op == "swap" and len(text) > 1:
                i = min(i, len(text) - 2)
                text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
            elif op == "replace_number":
                digits = [j for j, c in enumerate(text) if c.isdigit()]
                if digits:
                    j = self.rng.choice(digits)
                    k = j
                    while k < len(text) and (text[k].isdigit() or text[k] in ".eE"):
                        k += 1
                    text = text[:j] + self.rng.choice([*BAD_NUMBERS, "999", "-999", "4", "-5"]) + text[k:]
            elif op == "unbalance":
                text = text[:i] + self.rng.choice("()[]") + text[i:]
            elif op == "unknown":
                for name in sorted((*NAMES, *SKIPS, *KNOBS, *UNARY, "clamp"), key=len, reverse=True):
                    if name in text:
                        text = text.replace(name, self.rng.choice(UNKNOWN_NAMES), 1)
                        break
            elif op == "dup_sep":
                text = text[:i] + self.rng.choice([",,", "::", "==", "@@", "..", "--", "**"]) + text[i:]
            else:
                text = self.rng.choice(["", " ", ":", "*:", "=", "@", "x", "()", "[]", text + "," + text])
        return text

    def mutate_dict(self, spec: dict[Any, Any]) -> dict[Any, Any]:
        spec = dict(spec)
        key = self.rng.choice(list(spec))
        value = spec[key]
        r = self.rng.random()
        if r < 0.35:
            spec[key] = self.rng.choice(WRONG_TYPES)
        elif r < 0.6 and isinstance(value, dict) and value:
            inner = dict(value)
            k = self.rng.choice(list(inner))
            if self.rng.random() < 0.5:
                inner[k] = self.rng.choice(WRONG_TYPES)
            else:
                inner[self.rng.choice([*UNKNOWN_NAMES, "act.foo", "act.", "Skip", "heads-off", 3, None])] = \
                    inner.pop(k)
            spec[key] = inner
        elif r < 0.75:
            spec[self.rng.choice([None, 1.5, "x", "", "0-", "-", "1--2", "a-b", (1,), "**", "0:1"])] = \
                spec.pop(key)
        elif isinstance(value, str):
            spec[key] = self.mutate_string(value)
        else:
            spec[key] = {"act": self.rng.choice(WRONG_TYPES)} if self.rng.random() < 0.5 else \
                {"act": {self.rng.choice([*SCOPES, "dense2", "all"]): self.rng.choice(WRONG_TYPES)}}
        return spec

    def spec(self) -> tuple[Any, str]:
        """(spec, "valid" | "mutant"): half strings, half dicts; about 40% near-misses."""
        as_dict = self.rng.random() < 0.4
        spec: Any = self.valid_dict() if as_dict else self.valid_string()
        if self.rng.random() < 0.4:
            return (self.mutate_dict(spec) if as_dict else self.mutate_string(spec)), "mutant"
        return spec, "valid"


# ---------------------------------------------------------------- the property


@dataclass
class Outcome:
    """What happened to one spec: applied, refused (ActivationSpecError) or an other exception;
    ``problems`` lists every broken property (an other exception, a round trip, a decode)."""

    spec: Any
    applied: bool = False
    refused: str = ""
    problems: list[str] = field(default_factory=list)
    decoded: bool = False
    # non-finite logits under an expression that may itself give nan / inf (log, sqrt, /, ^, exp: the
    # documented result of an invalid operation or an overflow), which is not a broken property
    partial_nonfinite: bool = False


# the functions and operators of an expression that are not total or can overflow on finite input
PARTIAL = re.compile(r"log|sqrt|exp|/|\^|\*\*")


def is_partial(wiring: Any) -> bool:
    """Whether some activation of the wiring is an expression that may give nan / inf."""
    acts = [a for layer in wiring for a in (layer.act_dense, layer.act_shared, layer.act_experts)]
    return any(a.name == "expr" and PARTIAL.search(a.expr) for a in acts)


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def check_spec(llm: Any, spec: Any, tmp: Path, *, decode: bool = False) -> Outcome:
    """Apply ``spec`` to ``llm`` and check the properties; leaves ``llm`` at the identity wiring."""
    out = Outcome(spec)
    try:
        try:
            llm.set_wiring(spec)
        except ActivationSpecError as e:
            out.refused = str(e)
            return out
        except Exception as e:
            out.problems.append(f"set_wiring raised {_describe(e)}")
            return out
        out.applied = True
        w = llm.wiring
        text = str(w)
        for label, again in (("str", text), ("dict", w.to_dict())):
            try:
                llm.set_wiring(again)
            except Exception as e:
                out.problems.append(f"round trip ({label}) {again!r} raised {_describe(e)}")
                continue
            if llm.wiring != w:
                out.problems.append(f"round trip ({label}) {again!r} gives {str(llm.wiring)!r}")
        try:
            path = w.save(tmp / "fuzz_wiring.json")
            llm.set_wiring(path)
            if llm.wiring != w:
                out.problems.append(f"round trip (profile) of {text!r} gives {str(llm.wiring)!r}")
        except Exception as e:
            out.problems.append(f"round trip (profile) of {text!r} raised {_describe(e)}")
        if decode:
            llm.set_wiring(w)
            try:
                llm.eval(TOKENS)
                logits = np.asarray(llm.scores[len(TOKENS) - 1], dtype=np.float64)
                out.decoded = True
                if not np.isfinite(logits).all():
                    if is_partial(w):
                        out.partial_nonfinite = True
                    else:
                        out.problems.append(f"eval under {text!r}: non-finite logits")
            except Exception as e:
                out.problems.append(f"eval under {text!r} raised {_describe(e)}")
        return out
    finally:
        try:
            llm.set_wiring(None)
        except Exception as e:
            out.problems.append(f"reset raised {_describe(e)}")

