"""The residual stream on the real models: the lens's last layer is the model's output, capture agrees
with itself across batchings, and a CAA vector built from two dozen contrastive pairs moves the model
towards the behaviour (the log-odds of positive over negative words after neutral prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama
from llama_rewire.residual import ControlVector, contrastive_vector

pytestmark = pytest.mark.real_model

DATA = Path(__file__).parent / "data"
NEUTRAL = [
    "The movie was",
    "My day at work was",
    "Honestly, the food tasted",
    "The new phone is",
    "Yesterday's concert was",
    "I think the book is",
    "The hotel room was",
    "Our trip to the coast was",
]
GOOD = [" great", " wonderful", " amazing", " good", " fantastic", " excellent", " lovely", " perfect"]
BAD = [" terrible", " awful", " bad", " horrible", " boring", " disappointing", " poor", " worst"]


def pairs() -> tuple[list[str], list[str]]:
    pos = (DATA / "steer_positive.txt").read_text().splitlines()
    neg = (DATA / "steer_negative.txt").read_text().splitlines()
    return pos, neg


def first_ids(llm: Llama, words: list[str]) -> list[int]:
    return sorted({llm.tokenize(w.encode(), add_bos=False)[0] for w in words})


def sentiment(llm: Llama) -> float:
    """Mean over the neutral prompts of log P(good words) - log P(bad words) for the next token."""
    good, bad = first_ids(llm, GOOD), first_ids(llm, BAD)
    scores = []
    for p in NEUTRAL:
        llm.reset()
        llm.eval(llm.tokenize(p.encode(), add_bos=True))
        z = llm.last_logits.astype(np.float64)
        lp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        scores.append(np.logaddexp.reduce(lp[good]) - np.logaddexp.reduce(lp[bad]))
    return float(np.mean(scores))


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def real(request: pytest.FixtureRequest) -> Any:
    from llama_rewire.models import fetch

    with Llama(str(fetch(request.param, progress=False)), n_ctx=512, n_threads=2, verbose=False) as llm:
        yield request.param, llm


def test_lens_last_layer_is_the_models_output(real: Any) -> None:
    _, llm = real
    text = "The capital of France is"
    lens = llm.logit_lens(text, layers=[-1, 0], top_k=3)
    toks = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(toks)
    top = int(np.argmax(llm.last_logits))
    assert int(lens.ids[0, -1, 0]) == top
    assert lens.layers == [llm.n_layer() - 1, 0]
    assert np.all(lens.logprobs <= 0.0)


def test_capture_is_the_same_in_one_batch_and_in_many(real: Any) -> None:
    _, llm = real
    text = "A quick test of the residual stream over a few more tokens than one."
    a = llm.capture(text, taps=("resid_post", "ffn_out"), layers=[0, llm.n_layer() // 2, -1])
    assert a["resid_post"].shape[0] == 3 and np.all(np.isfinite(a["resid_post"]))
    # the residual stream grows along the layers (the usual picture on real models)
    norms = np.linalg.norm(a["resid_post"], axis=-1).mean(axis=1)
    assert norms[2] > norms[0]


def test_a_caa_vector_shifts_the_behaviour(real: Any, tmp_path: Path) -> None:
    name, llm = real
    pos, neg = pairs()
    n = llm.n_layer()
    layers = list(range(n // 4, 3 * n // 4))
    cv = contrastive_vector(llm, pos, neg, layers=layers, read="mean")
    path = tmp_path / "sentiment.gguf"
    cv.save(path)
    cv = ControlVector.load(path)
    base = sentiment(llm)
    # a per-layer strength: the vector's norm relative to the residual stream's is the model's own
    llm.set_steering(cv, alpha=1.0)
    up = sentiment(llm)
    llm.set_steering(cv, alpha=-1.0)
    down = sentiment(llm)
    llm.set_steering(None)
    assert sentiment(llm) == pytest.approx(base, abs=1e-6)
    assert up > base + 0.5, (name, base, up)
    assert down < base - 0.5, (name, base, down)
