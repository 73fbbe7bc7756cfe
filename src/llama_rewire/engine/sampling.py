"""How a completion samples (``SamplingParams``), and one sampling step (``sample_row``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from .. import _core, _params
from .._params import INT32, integer, number

SEED_RANDOM = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed


def _real(name: str, value: Any) -> float:
    return number(name, value)


def _typical(name: str, value: Any) -> float:
    # below 0 it keeps the single "most typical" token, as 0 does; but a negative value also keeps a token
    # of probability 0 (banned by a grammar or a -inf logit bias), which llama.cpp's typical sampler then
    # picks: the grammar refuses it, or a banned token is generated
    return max(0.0, number(name, value))


def _int32(name: str, value: Any) -> int:
    return integer(name, value, *INT32)


def _mirostat(name: str, value: Any) -> int:
    return integer(name, value, 0, 2)


def _knob(default: Any, check: Callable[[str, Any], Any]) -> Any:
    """A field a caller sets by its public name, checked by ``check(name, value)``."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class SamplingParams:
    """How one completion samples: the sampler chain's parameters, under their llama-cpp-python names.

    The one declaration of this list in Python: ``Llama``'s public methods take these names as keyword
    arguments and build one with :meth:`checked`; the native ``Sampler`` reads it field by field. The
    fields made with a check (``_knob``) are what a caller sets; the others are set by the ``Llama``
    (``penalty_last_n`` is its ``last_n_tokens_size``, ``seed`` is drawn from its seed sequence where the
    caller gives none) or by a completion (the grammar)."""

    temperature: float = _knob(0.8, _real)
    top_k: int = _knob(40, _int32)
    top_p: float = _knob(0.95, _real)
    min_p: float = _knob(0.05, _real)
    typical_p: float = _knob(1.0, _typical)
    repeat_penalty: float = _knob(1.0, _real)
    frequency_penalty: float = _knob(0.0, _real)
    presence_penalty: float = _knob(0.0, _real)
    mirostat_mode: int = _knob(0, _mirostat)
    mirostat_tau: float = _knob(5.0, _real)
    mirostat_eta: float = _knob(0.1, _real)
    min_keep: int = 1
    penalty_last_n: int = 64
    seed: int = SEED_RANDOM
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token, bias): -inf bans a token, +inf forces it
    grammar: str = ""  # GBNF text; "" for none
    grammar_lazy: bool = False  # the grammar applies from a trigger on
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()

    @classmethod
    def names(cls) -> frozenset[str]:
        """The fields a caller sets by name (plus ``logit_bias``, checked against the vocabulary)."""
        return frozenset(f.name for f in dataclasses.fields(cls) if "check" in f.metadata) | {"logit_bias"}

    @classmethod
    def checked(cls, n_vocab: int, *, temp_name: str = "temperature", logit_bias: Any = None,
                **values: Any) -> SamplingParams:
        """From the values a caller gave by name (``temperature`` named ``temp_name`` in errors, as the
        method that took it calls it), each checked and converted; ``logit_bias`` as llama-cpp-python
        takes it ({token id or its digits: bias}). Other fields are passed as they are."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            check = f.metadata.get("check")
            value = values.pop(f.name)
            out[f.name] = check(temp_name if f.name == "temperature" else f.name, value) if check else value
        if values:
            raise TypeError(f"SamplingParams: unknown parameters {sorted(values)}")
        return cls(**out, logit_bias=tuple(_params.logit_bias(logit_bias, n_vocab)))

    def with_grammar(self, gbnf: str, n_vocab: int, *, lazy: bool = False,
                     trigger_patterns: Sequence[str] = (),
                     trigger_tokens: Sequence[int] = ()) -> SamplingParams:
        """These parameters with a GBNF grammar (its token references checked against the vocabulary);
        ``lazy``: it applies once a trigger pattern or token appears."""
        _params.grammar_tokens(gbnf, n_vocab)
        return dataclasses.replace(self, grammar=gbnf, grammar_lazy=lazy,
                                   trigger_patterns=tuple(trigger_patterns),
                                   trigger_tokens=tuple(int(t) for t in trigger_tokens))


LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]


def sample_row(
    sampler: _core.Sampler,
    ctx: Any,
    out: int | None,
    raw: npt.NDArray[np.single] | None,
    *,
    logits_processor: LogitsProcessor | None,
    ids: npt.NDArray[np.intc] | Callable[[], npt.NDArray[np.intc]],
    n_vocab: int,
) -> int:
    """The token ``sampler`` draws for one row of logits.

    The row is output ``out`` of the context's last decode (-1: its last output), whose copy ``raw`` is
    given where the caller has read it. A ``logits_processor`` is called with the token ids so far
    (``ids``, or a function returning them) and a copy of ``raw``, and the sampler draws from what it
    returns, checked; without one the sampler reads the row in the context, or ``raw`` where ``out`` is
    None (the context no longer holds the row, e.g. after a state was loaded)."""
    if logits_processor is not None:
        if raw is None:
            raise ValueError("sample_row: a logits_processor needs the row's logits (raw)")
        history = ids() if callable(ids) else ids
        processed = _params.processed_logits(logits_processor(history, raw.copy()), n_vocab)
        return int(sampler.sample_logits(processed))
    if out is None:
        if raw is None:
            raise ValueError("sample_row: without an output of the context, the row (raw) is needed")
        return int(sampler.sample_logits(raw))
    return int(sampler.sample(ctx, out))
