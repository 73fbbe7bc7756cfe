"""The original and a rewired model on the same windows: perplexity of both, KL, top-1 agreement."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..wiring.spec import Wiring
from ..wiring.spec import WiringSpec as Spec
from .measure import measure
from .windows import check_ctx, check_llm, finite_or_none, make_windows

if TYPE_CHECKING:
    from ..llama import Llama


@dataclass
class CompareResult:
    """Figures over ``n_tokens`` scored tokens.

    ``kl_mean`` / ``kl_max``: KL(original || rewired) in nats per scored token (mean and worst);
    ``top1_agreement``: the fraction of scored positions where both models' most likely next token is the
    same. With ``prompt`` given, ``completions`` holds both greedy completions of it.
    """

    spec: str
    activations: list[str]
    ppl_original: float
    ppl_original_stderr: float
    ppl_rewired: float
    ppl_rewired_stderr: float
    delta_ppl: float
    kl_mean: float
    kl_max: float
    top1_agreement: float
    n_tokens: int
    n_windows: int
    n_windows_total: int
    n_ctx: int
    model: str = ""
    interrupted: bool = False
    wiring: str = ""  # the canonical spec of the whole wiring that ran
    window_ppl_original: list[float] = field(default_factory=list)
    window_ppl_rewired: list[float] = field(default_factory=list)
    window_kl: list[float] = field(default_factory=list)
    prompt: str | None = None
    completions: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, float):
                d[key] = finite_or_none(value)
            elif key.startswith("window_"):
                d[key] = [finite_or_none(x) for x in value]
        return d


def spec_text(spec: Spec) -> str:
    """A spec as one line of text (for reports)."""
    if spec is None:
        return ""
    if isinstance(spec, Wiring):
        return str(spec)
    if isinstance(spec, Mapping):
        return ", ".join(f"{k}:{v}" for k, v in spec.items())
    return os.fspath(spec).strip()  # a spec string, or the path of a profile


def compare(llm: Llama, text: str, spec: Spec, n_ctx: int = 512, *, max_windows: int | None = None,
            prompt: str | None = None, n_predict: int = 32, progress: bool = False) -> CompareResult:
    """Compare the model as stored with the wiring ``spec`` over ``text`` in windows of ``n_ctx`` tokens.

    ``llm`` needs ``logits_all=True`` and a context of at least ``n_ctx`` (see :func:`load`); its
    activation table is restored afterwards. An empty spec compares the original with itself (KL 0,
    agreement 1). Ctrl-C during the run returns the completed windows' figures with ``interrupted=True``.
    """
    check_llm(llm, check_ctx(n_ctx))
    windows = make_windows(llm, text, n_ctx, max_windows)
    saved = llm.wiring
    llm.set_wiring(spec)  # a bad spec fails here, before any work
    table, canonical = llm.activations, str(llm.wiring)
    llm.set_wiring(saved)

    m = measure(llm, windows, [spec], progress=progress, desc="compare")
    orig, rew = m.original, m.rewired[0]
    (p0, e0), (p1, e1) = orig.ppl(), rew.ppl()
    result = CompareResult(
        spec=spec_text(spec), activations=table, wiring=canonical,
        ppl_original=p0, ppl_original_stderr=e0, ppl_rewired=p1, ppl_rewired_stderr=e1, delta_ppl=p1 - p0,
        kl_mean=rew.kl_mean(), kl_max=rew.kl_max(), top1_agreement=rew.top1_agreement(),
        n_tokens=rew.n_tokens, n_windows=m.n_windows, n_windows_total=windows.count, n_ctx=n_ctx,
        model=llm.model_path, interrupted=m.interrupted,
        window_ppl_original=orig.window_ppl(), window_ppl_rewired=rew.window_ppl(), window_kl=rew.window_kl(),
    )
    if prompt is not None and not m.interrupted:
        result.prompt = prompt
        result.completions = greedy_pair(llm, prompt, spec, n_predict)
    return result


def greedy_pair(llm: Llama, prompt: str, spec: Spec, n_predict: int) -> dict[str, str]:
    """The greedy completions of ``prompt`` by the original and the rewired model."""
    if isinstance(n_predict, bool) or not isinstance(n_predict, int) or n_predict < 1:
        raise ValueError(f"n_predict must be a positive integer, got {n_predict!r}")
    saved = llm.wiring
    out: dict[str, str] = {}
    try:
        for name, wiring in (("original", None), ("rewired", spec)):
            llm.set_wiring(wiring)
            done = llm.create_completion(prompt, max_tokens=n_predict, temperature=0.0)
            out[name] = done["choices"][0]["text"]  # type: ignore[index]
    finally:
        llm.set_wiring(saved)
    return out
