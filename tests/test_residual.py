"""The residual stream on the tiny models against the numpy forward pass: every tap at every layer and
position, the logit lens, steering, directional ablation and activation patching (alone, together and
under a wiring); the identities (alpha 0, patching a prompt with its own values) bit for bit; values
changed between tokens without a new graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err

from llama_rewire import _core
from llama_rewire.residual import Ablate, Patch, Steer

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12, 33, 7]

DENSE = ["llama", "gpt2", "phi3", "gemma3"]
MOE = ["moe", "moe_shared", "moe_merged"]
SHARED_EXPERT = {"moe_shared", "moe_merged"}  # routed + shared experts: no one ffn_out tensor
GELU_MODELS = {"gpt2", "gemma3"}  # llama.cpp's CPU gelu reads an fp16 table: ~1e-3 relative


def tol(kind: str) -> float:
    return 5e-3 if kind in GELU_MODELS else 1e-4


def points_of(kind: str) -> list[str]:
    pts = ["resid_post", "attn_out"]
    if kind not in SHARED_EXPERT:
        pts.append("ffn_out")
    if kind in DENSE:
        pts.append("ffn_act")
    return pts


def reference(
    spec: Any, edits: list[dict[str, Any]] | None = None, wiring: Any = None, tokens: list[int] = TOKENS
) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    taps: dict[str, dict[int, np.ndarray]] = {}
    logits = numpy_ref.forward(spec, tokens, wiring=wiring, hook=numpy_ref.edit_hook(edits or [], taps))
    return logits, taps


def rng_rows(n: int, width: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, width)) * scale).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", DENSE + MOE)
def test_every_tap_matches_the_reference(tiny: Any, tiny_llm: Any, kind: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind)
    points = points_of(kind)
    if kind in MOE and numpy_ref.router_margin(spec, TOKENS) < 1e-4:
        pytest.skip("the reference's routing is near a tie: float32 may pick other experts")
    got = llm.capture(TOKENS, taps=points)
    _, taps = reference(spec)
    for p in points:
        assert got[p].shape[:2] == (spec.n_layer, len(TOKENS))
        for il in range(spec.n_layer):
            err = rel_err(got[p][il], taps[p][il])
            assert err < tol(kind), f"{p} of layer {il}: rel err {err:.2e}"


def test_capture_takes_layers_in_the_order_asked(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("llama")
    llm = tiny_llm("llama")
    full = llm.capture(TOKENS, taps="resid_post")["resid_post"]
    some = llm.capture(TOKENS, taps="resid_post", layers=[2, 0])["resid_post"]
    assert np.array_equal(some, full[[2, 0]])
    last = llm.capture(TOKENS, taps="resid_post", layers=-1)["resid_post"]
    assert np.array_equal(last[0], full[spec.n_layer - 1])


def test_capture_over_several_ubatches_equals_one(tiny: Any, tiny_llm: Any) -> None:
    one = tiny_llm("llama").capture(TOKENS, taps=("resid_post", "ffn_act"))
    chunked = tiny_llm("llama", n_batch=5, n_ubatch=5).capture(TOKENS, taps=("resid_post", "ffn_act"))
    for p in one:
        assert rel_err(chunked[p], one[p]) < 1e-5


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_capture_under_a_wiring(tiny: Any, tiny_llm: Any, kind: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind, wiring="0:attn_scale=0.5, 1:skip=ffn, 2:heads_off=[1]")
    wiring: list[dict[str, Any]] = [{} for _ in range(spec.n_layer)]
    wiring[0]["attn_scale"] = 0.5
    wiring[1]["skip_ffn"] = True
    wiring[2]["heads_off"] = [1]
    got = llm.capture(TOKENS, taps=("resid_post", "attn_out", "ffn_out", "ffn_act"))
    _, taps = reference(spec, wiring=wiring)
    for p in ("resid_post", "attn_out", "ffn_out", "ffn_act"):
        for il in range(spec.n_layer):
            if p in ("ffn_out", "ffn_act") and il == 1:
                assert not got[p][il].any()  # a skipped FFN contributes nothing
                continue
            assert rel_err(got[p][il], taps[p][il]) < tol(kind), f"{p} {il}"


@pytest.mark.parametrize("kind", ["llama", "gemma3", "moe", "phi3"])
def test_a_tapped_last_layer_keeps_every_row_without_every_logit(tiny_llm: Any, kind: str) -> None:
    """llama.cpp drops the rows without outputs inside the last layer; tapped, that layer keeps them and
    the output rows are picked after it: a decode with one output reads every token's last layer, and its
    logits are the untapped graph's (up to the batch size the last layer's kernels ran at)."""
    llm = tiny_llm(kind, logits_all=False)
    n = llm.n_layer()
    ctx = llm.ctx
    ctx.memory_clear()
    plain = np.asarray(ctx.decode(TOKENS, 0, False, True), dtype=np.float64)
    _core.rewire_taps_set(ctx, [0] * (n - 1) + [0b101])  # resid_post and ffn_out of the last layer
    ctx.memory_clear()
    tapped = np.asarray(ctx.decode(TOKENS, 0, False, True), dtype=np.float64)
    rows, pos = _core.rewire_tap_read(ctx, 0, n - 1)
    assert rows.shape[0] == len(TOKENS)
    assert list(pos) == list(range(len(TOKENS)))
    assert rel_err(tapped, plain) < 1e-5
    _core.rewire_taps_set(ctx, [])
    ctx.memory_clear()


def test_capture_leaves_the_model_as_it_was(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    before = logits_of(llm, TOKENS)
    llm.capture(TOKENS, taps=("resid_post", "attn_out", "ffn_out", "ffn_act"))
    assert np.array_equal(logits_of(llm, TOKENS), before)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "moe"])
def test_logit_lens_matches_the_reference(tiny: Any, tiny_llm: Any, kind: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind)
    lens = llm.logit_lens(TOKENS, top_k=4)
    _, taps = reference(spec)
    for j, il in enumerate(lens.layers):
        logits = numpy_ref.head(spec, taps["resid_post"][il])
        lp = logits - logits.max(axis=1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
        got = lens.logprobs[j]
        want = np.take_along_axis(lp, lens.ids[j].astype(np.int64), axis=1)
        assert np.abs(got - want).max() < 50 * tol(kind), f"layer {il}"
        assert np.abs(lens.logprobs[j, :, 0] - lp.max(axis=1)).max() < 50 * tol(kind)  # its top is the top


def test_logit_lens_of_the_last_layer_is_the_models_output(tiny_llm: Any) -> None:
    llm = tiny_llm("gemma3")
    logits = logits_of(llm, TOKENS).astype(np.float64)
    lp = logits - logits.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    lens = llm.logit_lens(TOKENS, layers=[-1], top_k=3)
    assert np.array_equal(lens.ids[0], np.argsort(-lp, axis=1, kind="stable")[:, :3])
    assert np.abs(lens.logprobs[0] - np.sort(lp, axis=1)[:, ::-1][:, :3]).max() < 1e-5
    assert lens.table().count("\n") == 1  # a header and one layer


# ---------------------------------------------------------------- writing


def edit_cases() -> list[Any]:
    """(name, kinds, engine edits(spec), numpy edits(spec))"""

    def steer0(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        v = rng_rows(1, spec.n_embd, 1, 0.5)
        return [Steer(0, v[0], alpha=2.0)], [
            {"kind": "add", "point": "resid_post", "layer": 0, "rows": 2.0 * v}
        ]

    def steer_range(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        v = rng_rows(1, spec.n_embd, 2, 0.5)
        return (
            [Steer(spec.n_layer - 1, v[0], alpha=-3.0, tokens=(4, 9))],
            [
                {
                    "kind": "add",
                    "point": "resid_post",
                    "layer": spec.n_layer - 1,
                    "rows": -3.0 * v,
                    "range": (4, 9),
                }
            ],
        )

    def steer_attn(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        v = rng_rows(1, spec.n_embd, 3, 0.5)
        return (
            [Steer(1, v[0], point="attn_out", tokens=(6, None))],
            [{"kind": "add", "point": "attn_out", "layer": 1, "rows": v, "range": (6, None)}],
        )

    def ablate1(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        r = rng_rows(1, spec.n_embd, 4)
        return [Ablate(1, r[0])], [
            {"kind": "ablate", "point": "resid_post", "layer": 1, "rows": unit(r.astype(np.float64))}
        ]

    def ablate2(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        r = rng_rows(2, spec.n_embd, 5)
        q, _ = np.linalg.qr(r.astype(np.float64).T)
        return (
            [Ablate(0, r, point="ffn_out", tokens=(2, None))],
            [{"kind": "ablate", "point": "ffn_out", "layer": 0, "rows": q.T, "range": (2, None)}],
        )

    def patch(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        rows = rng_rows(2, spec.n_embd, 6)
        return (
            [Patch(1, (3, 7), rows)],
            [{"kind": "patch", "point": "resid_post", "layer": 1, "rows": rows, "positions": (3, 7)}],
        )

    def patch_act(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        rows = rng_rows(1, spec.n_ff, 7, 0.2)
        return (
            [Patch(0, (5,), rows, point="ffn_act")],
            [{"kind": "patch", "point": "ffn_act", "layer": 0, "rows": rows, "positions": (5,)}],
        )

    def together(spec: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        v, r, rows = (
            rng_rows(1, spec.n_embd, 8, 0.5),
            rng_rows(1, spec.n_embd, 9),
            rng_rows(1, spec.n_embd, 10),
        )
        return (
            [
                Steer(1, v[0]),
                Ablate(1, r[0]),
                Patch(1, (2,), rows),
                Steer(0, v[0], alpha=0.5, point="attn_out"),
            ],
            [
                {"kind": "add", "point": "resid_post", "layer": 1, "rows": v},
                {"kind": "ablate", "point": "resid_post", "layer": 1, "rows": unit(r.astype(np.float64))},
                {"kind": "patch", "point": "resid_post", "layer": 1, "rows": rows, "positions": (2,)},
                {"kind": "add", "point": "attn_out", "layer": 0, "rows": 0.5 * v},
            ],
        )

    table = [
        ("steer0", [*DENSE, "moe"], steer0),
        ("steer_range", DENSE, steer_range),
        ("steer_attn", ["llama", "gemma3"], steer_attn),
        ("ablate1", [*DENSE, "moe"], ablate1),
        ("ablate2", ["llama", "gemma3"], ablate2),
        ("patch", [*DENSE, "moe"], patch),
        ("patch_act", ["llama", "phi3", "gemma3"], patch_act),
        ("together", ["llama", "gemma3"], together),
    ]
    return [pytest.param(kind, make, id=f"{kind}-{name}") for name, kinds, make in table for kind in kinds]


@pytest.mark.parametrize(("kind", "make"), edit_cases())
def test_edit_matches_the_reference(tiny: Any, tiny_llm: Any, kind: str, make: Any) -> None:
    _, spec = tiny(kind)
    ours, theirs = make(spec)
    want, _ = reference(spec, theirs)
    if kind in MOE and numpy_ref.router_margin(spec, TOKENS) < 1e-4:
        pytest.skip("the reference's routing is near a tie: float32 may pick other experts")
    llm = tiny_llm(kind)
    llm.set_edits(ours)
    got = logits_of(llm, TOKENS)
    assert rel_err(got, want) < tol(kind)
    assert rel_err(got, reference(spec)[0]) > 20 * tol(kind)  # and the edit changed something


def test_edits_compose_with_a_wiring(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("gemma3")
    wiring: list[dict[str, Any]] = [{} for _ in range(spec.n_layer)]
    wiring[1]["ffn_scale"] = 0.3
    wiring[2]["skip_attn"] = True
    v = rng_rows(1, spec.n_embd, 11, 0.5)
    llm = tiny_llm("gemma3", wiring="1:ffn_scale=0.3, 2:skip=attn")
    llm.set_steering(v[0], alpha=1.5, layers=[1, 2])
    edits = [{"kind": "add", "point": "resid_post", "layer": il, "rows": 1.5 * v} for il in (1, 2)]
    want, _ = reference(spec, edits, wiring=wiring)
    assert rel_err(logits_of(llm, TOKENS), want) < tol("gemma3")


def test_ablation_leaves_no_component_along_the_direction(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("llama")
    r = unit(rng_rows(1, spec.n_embd, 12)[0])
    llm = tiny_llm("llama")
    llm.set_ablation(r, layers=[0, 2])
    h = llm.capture(TOKENS, taps="resid_post")["resid_post"]
    for il in (0, 2):
        assert np.abs(h[il] @ r).max() < 1e-5 * np.abs(h[il]).max()
    assert np.abs(h[1] @ r).max() > 1e-2 * np.abs(h[1]).max()  # layer 1 is left alone


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_zero_alpha_and_self_patching_are_bit_identical(tiny_llm: Any, kind: str) -> None:
    llm = tiny_llm(kind)
    plain = logits_of(llm, TOKENS)
    own = llm.capture(TOKENS, taps=("resid_post", "attn_out"))
    llm.set_steering(np.ones(llm.n_embd(), dtype=np.float32), alpha=0.0, layers=[0, 1, 2])
    assert np.array_equal(logits_of(llm, TOKENS), plain)
    llm.set_steering(None)
    llm.set_patch({1: own["resid_post"][1]})
    assert np.array_equal(logits_of(llm, TOKENS), plain)
    llm.set_patch({0: own["attn_out"][0]}, point="attn_out")
    assert np.array_equal(logits_of(llm, TOKENS), plain)
    # a patch from another prompt does change it
    other = llm.capture(TOKENS[::-1], taps="resid_post")["resid_post"]
    llm.set_patch({1: other[1][:4]}, positions=[0, 1, 2, 3])
    assert not np.array_equal(logits_of(llm, TOKENS), plain)
    llm.clear_edits()
    assert np.array_equal(logits_of(llm, TOKENS), plain)
    assert llm.edits == ()


def test_patching_a_clean_run_into_a_corrupted_one(tiny: Any, tiny_llm: Any) -> None:
    """Activation patching as interpretability uses it: the clean prompt's resid_post at layer L and
    position p, written into the corrupted prompt's run, equals the reference with the same patch."""
    _, spec = tiny("llama")
    clean, corrupt = TOKENS, [*TOKENS[:5], 88, *TOKENS[6:]]
    llm = tiny_llm("llama")
    cache = llm.capture(clean, taps="resid_post")["resid_post"]
    llm.set_patch({1: cache[1][5:6]}, positions=[5])
    got = logits_of(llm, corrupt)
    want, _ = reference(
        spec,
        [{"kind": "patch", "point": "resid_post", "layer": 1, "rows": cache[1][5:6], "positions": (5,)}],
        tokens=corrupt,
    )
    assert rel_err(got, want) < tol("llama")


def test_alpha_changes_between_tokens_keep_the_graph(tiny_llm: Any) -> None:
    llm = tiny_llm("llama", logits_all=False)
    v = np.ones(llm.n_embd(), dtype=np.float32)
    llm.set_steering(v, alpha=1.0, layers=[0, 1, 2])
    llm.eval(TOKENS[:4])
    llm.ctx.perf_reset()
    for i, t in enumerate(TOKENS[4:9]):
        llm.set_steering(v, alpha=1.0 + i, layers=[0, 1, 2], keep_cache=True)
        llm.eval([t])
    assert llm.ctx.perf()["n_reused"] >= 4  # every single-token decode after the first reuses its graph
    assert llm.n_tokens == 9  # the tokens already computed stayed
    # without keep_cache the tokens computed under the old alpha are dropped
    llm.set_steering(v, alpha=9.0, layers=[0, 1, 2])
    assert llm.n_tokens == 0


def test_steering_the_generated_tokens_only(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    v = rng_rows(1, llm.n_embd(), 13, 3.0)[0]
    n = len(TOKENS)

    def complete() -> Any:
        return llm.create_completion(TOKENS, max_tokens=6, temperature=0.0, logprobs=3)["choices"][0]

    plain = complete()
    for tokens, same_as in (("generated", (n, None)), ("prompt", (0, n))):
        llm.set_steering(v, alpha=2.0, layers=[0, 1], tokens=tokens)
        a = complete()
        llm.set_steering(v, alpha=2.0, layers=[0, 1], tokens=same_as)
        b = complete()
        assert a["text"] == b["text"]
        # b reuses a's prompt and evaluates its last token alone: other kernels, float32 rounding
        assert np.allclose(a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"], atol=1e-5)
        assert a["logprobs"]["token_logprobs"] != plain["logprobs"]["token_logprobs"]
    llm.set_steering(None)
    assert complete()["text"] == plain["text"]


def test_alpha_changes_inside_a_stream(tiny_llm: Any) -> None:
    """Between the tokens of an open stream the edits change with keep_cache=True (the stream goes on);
    without it the change would drop the stream's tokens and is refused."""
    llm = tiny_llm("llama")
    v = rng_rows(1, llm.n_embd(), 14, 2.0)[0]
    llm.set_steering(v, alpha=0.0, layers=[0, 1])
    stream = llm.create_completion(TOKENS, max_tokens=6, temperature=0.0, stream=True)
    texts = []
    for i, chunk in enumerate(stream):
        texts.append(chunk["choices"][0]["text"])
        if i == 1:
            with pytest.raises(RuntimeError, match="keep_cache=True"):
                llm.set_steering(v, alpha=3.0, layers=[0, 1])
            llm.set_steering(v, alpha=3.0, layers=[0, 1], keep_cache=True)
    assert len(texts) >= 3
    assert llm.edits[0].alpha == 3.0
