"""Independent float64 numpy forward pass for the tiny models of ``tiny_models``.

``forward(spec, tokens, acts, wiring=...)`` returns the logits of every position of one
causal sequence (positions 0..n-1), with the FFN activation of each layer
optionally overridden, and each layer optionally rewired (see ``WIRING_KEYS``).
The math follows llama.cpp (commit 0c1e570) for the "llama" (dense and
mixtral-style MoE), "gpt2", "qwen2moe", "phi3" (fused gate+up ``ffn_up``),
"hy_v3" (merged ``ffn_gate_up_exps`` experts, Q/K norm, ungated shared expert)
and "gemma3" (scaled embeddings, post-norms, sliding-window layers with their
own RoPE base, tied output) architectures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

if TYPE_CHECKING:  # only for annotations: the spec is duck-typed
    from tiny_models import ModelSpec

Activation = Callable[[np.ndarray, Optional[float]], np.ndarray]
ActFn = Callable[[np.ndarray], np.ndarray]
# one entry of ``acts``: (name, param), (name, param, threshold), a bare name, a function of x (an
# expression activation), or None for the arch's default
ActEntry = Union[tuple[str, Optional[float]], tuple[str, Optional[float], float], str, ActFn, None]
# one layer's rewiring: a dict with some of WIRING_KEYS (a missing key keeps the model's own behaviour)
Wiring = Mapping[str, Any]

WIRING_KEYS = frozenset({
    "act",           # ActEntry for every FFN scope of the layer (the same as acts[il])
    "act.dense",     # ActEntry for the dense FFN only (a non-MoE layer); overrides "act"
    "act.shared",    # ActEntry for the shared expert only (not its sigmoid gate); overrides "act"
    "act.experts",   # ActEntry for the routed experts only; overrides "act"
    "skip_attn",     # bool: the attention adds nothing to the residual stream
    "skip_ffn",      # bool: the FFN (routed + shared) adds nothing to the residual stream
    "attn_scale",    # float s: x = x + s * post_norm(attn(norm(x))) (no post_norm: s * attn(norm(x)))
    "ffn_scale",     # float s: the same for the FFN; for MoE s * (routed + shared)
    "heads_off",     # list of query heads whose outputs are 0 before attn_output
    "experts_used",  # int k: top-k routed experts per token (weights normalised as the arch does)
    "experts_off",   # list of experts whose router logits are -inf before the softmax
})

# ---------------------------------------------------------------- activations

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), written overflow-free."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x: np.ndarray, beta: float | None) -> np.ndarray:
    """log(1 + exp(beta x)) / beta, and x where beta x > 20 (torch's threshold)."""
    beta = 1.0 if beta is None else beta
    bx = beta * x
    return np.where(bx > 20.0, x, np.logaddexp(0.0, bx) / beta)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    """min(1, max(0, (x + 3) / 6))."""
    return np.clip((x + 3.0) / 6.0, 0.0, 1.0)


def _param(p: float | None, default: float) -> float:
    return default if p is None else float(p)


ACTIVATIONS: dict[str, Activation] = {
    "silu": lambda x, p: x * _sigmoid(x),
    "gelu": lambda x, p: _gelu_tanh(x),
    "gelu_erf": lambda x, p: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_quick": lambda x, p: x * _sigmoid(1.702 * x),
    "relu": lambda x, p: np.maximum(x, 0.0),
    "relu2": lambda x, p: np.maximum(x, 0.0) ** 2,
    "leaky_relu": lambda x, p: np.where(x > 0, x, _param(p, 0.01) * x),
    "elu": lambda x, p: np.where(x > 0, x, _param(p, 1.0) * np.expm1(np.minimum(x, 0.0))),
    "tanh": lambda x, p: np.tanh(x),
    "sigmoid": lambda x, p: _sigmoid(x),
    "softplus": lambda x, p: _softplus(x, _param(p, 1.0)),
    "mish": lambda x, p: x * np.tanh(_softplus(x, 1.0)),
    "hardswish": lambda x, p: x * _hardsigmoid(x),
    "hardsigmoid": lambda x, p: _hardsigmoid(x),
    "swish": lambda x, p: x * _sigmoid(_param(p, 1.0) * x),
    "identity": lambda x, p: x,
}


def resolve_act(spec: ModelSpec, act: ActEntry) -> ActFn:
    """Turn one entry of ``acts`` into a function; None / "default" = the arch's own.

    An entry is a function of x (used as is), a name, (name, param) or (name, param, threshold):
    with a threshold t > 0 the activation a is kept where |a| > t and set to 0 elsewhere.
    """
    if callable(act):
        return act
    name, param, *rest = (act, None) if act is None or isinstance(act, str) else act
    threshold = float(rest[0]) if rest else 0.0
    if name is None or name == "default":
        name, param = spec.default_act, None
    if name not in ACTIVATIONS:
        raise KeyError(f"unknown activation {name!r}")
    fn = ACTIVATIONS[name]
    if threshold > 0:
        return lambda x: np.where(np.abs(a := fn(x, param)) > threshold, a, 0.0)
    return lambda x: fn(x, param)


# ---------------------------------------------------------------- building blocks

def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """y = x W^T (+ b); W has numpy shape (n_out, n_in)."""
    y = x @ _f64(w).T
    return y if b is None else y + _f64(b)


def _norm(spec: ModelSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * w.
    LayerNorm: (x - mean) / sqrt(var + eps) * w + b."""
    if spec.norm == "rms":
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + spec.norm_eps)
    else:
        c = x - x.mean(axis=-1, keepdims=True)
        y = c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + spec.norm_eps)
    y = y * _f64(w)
    return y if b is None else y + _f64(b)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _rope(spec: ModelSpec, x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """Rotate pairs of x [n_tokens, n_heads, head_dim] by pos * base^(-2i/head_dim).

    "norm" (llama): pair i is (x[2i], x[2i+1]); "neox" (qwen2): pair i is (x[i], x[i+d/2]).
    (a, b) -> (a cos - b sin, a sin + b cos).
    """
    d = x.shape[-1]
    theta = pos[:, None] * base ** (-np.arange(0, d, 2) / d)  # [n_tokens, d/2]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    if spec.rope == "norm":
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if spec.rope == "norm":
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : d // 2], out[..., d // 2:] = ra, rb
    return out


def _qkv(spec: ModelSpec, layer: dict[str, np.ndarray], h: np.ndarray) -> tuple[np.ndarray, ...]:
    """Project to Q [T, n_head, hd], K and V [T, n_head_kv, hd] (fused or separate)."""
    n_q, n_kv = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    if "attn_qkv.weight" in layer:
        qkv = _linear(h, layer["attn_qkv.weight"], layer.get("attn_qkv.bias"))
        q, k, v = qkv[:, :n_q], qkv[:, n_q:n_q + n_kv], qkv[:, n_q + n_kv:]
    else:
        q = _linear(h, layer["attn_q.weight"], layer.get("attn_q.bias"))
        k = _linear(h, layer["attn_k.weight"], layer.get("attn_k.bias"))
        v = _linear(h, layer["attn_v.weight"], layer.get("attn_v.bias"))
    t = h.shape[0]
    return (q.reshape(t, spec.n_head, spec.head_dim),
            k.reshape(t, spec.n_head_kv, spec.head_dim),
            v.reshape(t, spec.n_head_kv, spec.head_dim))


def _attention(spec: ModelSpec, layer: dict[str, np.ndarray], h: np.ndarray, il: int,
               heads_off: Sequence[int] = ()) -> np.ndarray:
    """Causal multi-head attention; query head j reads kv head j // (n_head / n_head_kv).

    On a sliding-window layer query i sees key j only when i - j < n_swa (llama.cpp masks
    p1 - p0 >= n_swa), and RoPE uses rope_freq_base_swa.  The outputs of the heads in
    heads_off are 0 before the output projection.
    """
    t = h.shape[0]
    q, k, v = _qkv(spec, layer, h)
    if spec.qk_norm:  # RMSNorm over head_dim of every head, before RoPE
        q = _norm(spec, q, layer["attn_q_norm.weight"], None)
        k = _norm(spec, k, layer["attn_k_norm.weight"], None)
    if spec.rope is not None:
        pos = np.arange(t, dtype=np.float64)
        base = spec.rope_freq_base_swa if spec.is_swa(il) else spec.rope_freq_base
        q, k = _rope(spec, q, pos, base), _rope(spec, k, pos, base)
    group = spec.n_head // spec.n_head_kv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    # scores[head, i, j] = q_i . k_j / sqrt(head_dim), j <= i (and i - j < n_swa)
    scores = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(spec.head_dim)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = (j <= i) & ((i - j < spec.n_swa) if spec.is_swa(il) else True)
    scores = np.where(visible, scores, -np.inf)
    out = np.einsum("hij,jhd->ihd", _softmax(scores), v)  # [T, n_head, head_dim]
    out[:, list(heads_off)] = 0.0
    return _linear(out.reshape(t, -1), layer["attn_output.weight"], layer.get("attn_output.bias"))


def _mlp(x: np.ndarray, act: Callable[[np.ndarray], np.ndarray], up: np.ndarray, down: np.ndarray,
         gate: np.ndarray | None = None, up_b: np.ndarray | None = None,
         down_b: np.ndarray | None = None,
         down_in: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Gated: down(act(gate x) * (up x)).  Plain: down(act(up x + up_b)) + down_b.
    down_in, if given, sees (and may replace) the input of down."""
    u = _linear(x, up, up_b)
    a = act(u) if gate is None else act(_linear(x, gate)) * u
    if down_in is not None:
        a = down_in(a)
    return _linear(a, down, down_b)


def _split_gate_up(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fused gate+up weight (..., 2 n_ff, n_in) -> (gate, up): gate is the FIRST half of the
    rows (ggml_swiglu / build_moe_ffn's views activate the first half of the output)."""
    n_ff = w.shape[-2] // 2
    return w[..., :n_ff, :], w[..., n_ff:, :]


def _dense_ffn(spec: ModelSpec, layer: dict[str, np.ndarray], h: np.ndarray, act: Callable,
               down_in: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    if spec.fused_gate_up:  # phi3: act(first half of ffn_up x) * (second half)
        gate, up = _split_gate_up(layer["ffn_up.weight"])
        return _mlp(h, act, up, layer["ffn_down.weight"], gate=gate, down_in=down_in)
    return _mlp(h, act, layer["ffn_up.weight"], layer["ffn_down.weight"],
                gate=layer.get("ffn_gate.weight"), up_b=layer.get("ffn_up.bias"),
                down_b=layer.get("ffn_down.bias"), down_in=down_in)


def _router_probs(layer: dict[str, np.ndarray], h: np.ndarray, experts_off: Sequence[int]) -> np.ndarray:
    """p = softmax(W_inp h) over all experts, the logits of experts_off set to -inf first."""
    logits = _linear(h, layer["ffn_gate_inp.weight"])
    logits[:, list(experts_off)] = -np.inf
    return _softmax(logits)


def _experts_used(spec: ModelSpec, w: Wiring) -> int:
    """The wiring's k (default n_expert_used), checked against the experts left on."""
    k = int(w.get("experts_used", spec.n_expert_used))
    n_on = spec.n_expert - len(set(w.get("experts_off", ())))
    if not 1 <= k <= n_on:
        raise ValueError(f"experts_used={k} with {n_on} of {spec.n_expert} experts on")
    return k


def _route(spec: ModelSpec, layer: dict[str, np.ndarray], h: np.ndarray,
           w: Wiring) -> tuple[np.ndarray, np.ndarray]:
    """Router: p = softmax(W_inp h) (experts_off masked); keep the top k (experts_used).

    Returns (expert ids [T, k], weights [T, k]).  With expert_weights_norm the kept
    weights are divided by their sum (clamped below at 6.103515625e-5, as llama.cpp).
    """
    k = _experts_used(spec, w)
    probs = _router_probs(layer, h, w.get("experts_off", ()))
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, ids, axis=-1)
    if spec.expert_weights_norm:
        weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), 6.103515625e-5)
    return ids, weights


def _moe_ffn(spec: ModelSpec, layer: dict[str, np.ndarray], h: np.ndarray, wiring: Wiring) -> np.ndarray:
    """sum_k w_k expert_{id_k}(h) (+ g * shared_expert(h), g = sigmoid(ffn_gate_inp_shexp . h)
    when the layer has that gate (qwen2moe), else g = 1 (hy_v3))."""
    ids, w = _route(spec, layer, h, wiring)
    act = _scope_act(spec, wiring, "experts")
    if "ffn_gate_up_exps.weight" in layer:  # merged experts: rows [gate; up] of every expert
        gate_exps, up_exps = _split_gate_up(layer["ffn_gate_up_exps.weight"])
    else:
        gate_exps, up_exps = layer["ffn_gate_exps.weight"], layer["ffn_up_exps.weight"]
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for e, we in zip(ids[t], w[t]):
            out[t] += we * _mlp(h[t], act, up_exps[e], layer["ffn_down_exps.weight"][e],
                                gate=gate_exps[e])
    if "ffn_up_shexp.weight" in layer:
        shared = _mlp(h, _scope_act(spec, wiring, "shared"), layer["ffn_up_shexp.weight"],
                      layer["ffn_down_shexp.weight"], gate=layer["ffn_gate_shexp.weight"])
        if "ffn_gate_inp_shexp.weight" in layer:
            shared = _sigmoid(h @ _f64(layer["ffn_gate_inp_shexp.weight"]))[:, None] * shared
        out += shared
    return out


def _embed(spec: ModelSpec, tokens: Sequence[int]) -> np.ndarray:
    """Token embedding rows * embd_scale (+ learned position rows for gpt2)."""
    ids = np.asarray(tokens, dtype=np.int64)
    x = _f64(spec.tensors["token_embd.weight"])[ids] * spec.embd_scale
    if "position_embd.weight" in spec.tensors:
        x = x + _f64(spec.tensors["position_embd.weight"])[: len(ids)]
    return x


# ---------------------------------------------------------------- wiring

def _wirings(spec: ModelSpec, acts: Sequence[ActEntry] | None,
             wiring: Sequence[Wiring] | None) -> list[dict[str, Any]]:
    """One checked wiring dict per layer, acts[il] (when not None) merged in as its "act"."""
    for what, seq in (("acts", acts), ("wiring", wiring)):
        if seq is not None and len(seq) != spec.n_layer:
            raise ValueError(f"{what} has {len(seq)} entries, model has {spec.n_layer} layers")
    out = []
    for il in range(spec.n_layer):
        w = dict(wiring[il]) if wiring is not None else {}
        if unknown := sorted(set(w) - WIRING_KEYS):
            raise KeyError(f"layer {il}: unknown wiring keys {unknown}")
        if not all(0 <= j < spec.n_head for j in w.get("heads_off", ())):
            raise ValueError(f"layer {il}: heads_off {w['heads_off']} outside 0..{spec.n_head - 1}")
        if not all(0 <= e < spec.n_expert for e in w.get("experts_off", ())):
            raise ValueError(f"layer {il}: experts_off {w['experts_off']} outside 0..{spec.n_expert - 1}")
        if acts is not None and acts[il] is not None:
            if "act" in w:
                raise ValueError(f"layer {il}: an activation in both acts and wiring")
            w["act"] = acts[il]
        out.append(w)
    return out


def _scope_act(spec: ModelSpec, w: Wiring, scope: str) -> ActFn:
    """The activation of one FFN scope ("dense", "shared" or "experts"): w["act.<scope>"] if the
    wiring has that key, else w["act"], else the arch's own."""
    key = f"act.{scope}"
    return resolve_act(spec, w[key] if key in w else w.get("act"))


def _post_norm(spec: ModelSpec, layer: dict[str, np.ndarray], name: str, y: np.ndarray) -> np.ndarray:
    """norm(y) with the layer's post-norm weight ``name`` where the arch has post-norms, else y."""
    return _norm(spec, y, layer[name], None) if spec.post_norm else y


# ---------------------------------------------------------------- forward

# hook(point, layer, value [T, width]) -> value: sees (and may replace) each residual-stream point
Hook = Callable[[str, int, np.ndarray], np.ndarray]


def _no_hook(point: str, il: int, v: np.ndarray) -> np.ndarray:
    return v


def _blocks(spec: ModelSpec, tokens: Sequence[int], acts: Sequence[ActEntry] | None,
            wiring: Sequence[Wiring] | None = None,
            hook: Hook | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run all transformer blocks:
        x = x + attn_out,  attn_out = s_attn * post_norm(attn(norm(x)))
        x = x + ffn_out,   ffn_out  = s_ffn  * post_norm(ffn(norm(x)))   (ffn_act: the input of down)
        resid_post = x
    post_norm only where the arch has one; s = the wiring's scale (default 1), and a skipped
    sublayer adds nothing (and has no point). hook sees each point (attn_out, ffn_act of a dense FFN,
    ffn_out, resid_post) and returns its value.

    Returns the final residual stream [T, n_embd] and each layer's FFN input norm(x).
    """
    hk = hook or _no_hook
    x = _embed(spec, tokens)
    ffn_inputs = []
    for il, (layer, w) in enumerate(zip(spec.layers, _wirings(spec, acts, wiring))):
        if not w.get("skip_attn", False):
            h = _norm(spec, x, layer["attn_norm.weight"], layer.get("attn_norm.bias"))
            a = _attention(spec, layer, h, il, w.get("heads_off", ()))
            a = _post_norm(spec, layer, "post_attention_norm.weight", a)
            x = x + hk("attn_out", il, w.get("attn_scale", 1.0) * a)
        h = _norm(spec, x, layer["ffn_norm.weight"], layer.get("ffn_norm.bias"))
        ffn_inputs.append(h)
        if not w.get("skip_ffn", False):
            if spec.n_expert:
                f = _moe_ffn(spec, layer, h, w)
            else:
                f = _dense_ffn(spec, layer, h, _scope_act(spec, w, "dense"),
                               down_in=lambda a, il=il: hk("ffn_act", il, a))
            f = _post_norm(spec, layer, "post_ffw_norm.weight", f)
            x = x + hk("ffn_out", il, w.get("ffn_scale", 1.0) * f)
        x = hk("resid_post", il, x)
    return x, ffn_inputs


def head(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """The final norm and output head: logits [T, n_vocab] of a residual stream x [T, n_embd]."""
    x = _norm(spec, x, spec.tensors["output_norm.weight"], spec.tensors.get("output_norm.bias"))
    return _linear(x, spec.tensors.get("output.weight", spec.tensors["token_embd.weight"]))


def edit_hook(edits: Sequence[dict[str, Any]], taps: dict[str, dict[int, np.ndarray]] | None = None) -> Hook:
    """A hook doing residual-stream edits, in the order patch, ablate, add at a point, then recording
    the value in taps[point][layer]. An edit: {"kind": "patch" | "ablate" | "add", "point", "layer",
    "rows" [n, width], "positions" (patch: one per row), "range" (ablate, add: [begin, end), end None)}.
    Ablation rows must be orthonormal: h - R^T (R h)."""
    def hook(point: str, il: int, v: np.ndarray) -> np.ndarray:
        v = np.array(v, dtype=np.float64)
        pos = np.arange(v.shape[0])
        here = [e for e in edits if e["point"] == point and e["layer"] == il]
        for kind in ("patch", "ablate", "add"):
            for e in (e for e in here if e["kind"] == kind):
                rows = np.asarray(e["rows"], dtype=np.float64)
                if kind == "patch":
                    for p, row in zip(e["positions"], rows):
                        v[pos == p] = row
                    continue
                b, end = e.get("range", (0, None))
                sel = (pos >= b) & ((pos < end) if end is not None else True)
                if kind == "ablate":
                    v[sel] = v[sel] - (v[sel] @ rows.T) @ rows
                else:
                    v[sel] = v[sel] + rows[0]
        if taps is not None:
            taps.setdefault(point, {})[il] = v.copy()
        return v
    return hook


def forward(spec: ModelSpec, tokens: Sequence[int], acts: Sequence[ActEntry] | None = None, *,
            wiring: Sequence[Wiring] | None = None, hook: Hook | None = None) -> np.ndarray:
    """Logits [n_tokens, n_vocab] (float64) for one causal sequence at positions 0..n-1.

    ``acts[il]`` overrides the FFN activation of layer il (for gated FFNs the gate
    activation, for MoE every expert and the shared expert, not the shared expert's
    sigmoid gate); None or ("default", None) keeps the architecture's own activation.
    ``wiring[il]`` rewires layer il (a dict with keys from WIRING_KEYS); acts[il] is the
    same as wiring[il]["act"], and a layer may not set both. ``hook`` sees each residual-stream point
    (see _blocks and edit_hook).
    The output is tied to token_embd when the model has no output.weight.
    """
    x, _ = _blocks(spec, tokens, acts, wiring, hook)
    return head(spec, x)


def dense_ffn_tensors(spec: ModelSpec, tokens: Sequence[int], acts: Sequence[ActEntry] | None = None, *,
                      wiring: Sequence[Wiring] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """For a dense (non-MoE) model: per layer (act output, ffn_down input), each [T, n_ff].

    For a gated FFN the act output is act(gate x) and the down input act(gate x) * (up x); for a plain
    FFN both are act(up x + b).
    """
    if spec.n_expert:
        raise ValueError("dense models only")
    _, ffn_inputs = _blocks(spec, tokens, acts, wiring)
    out = []
    for layer, h, w in zip(spec.layers, ffn_inputs, _wirings(spec, acts, wiring)):
        act = _scope_act(spec, w, "dense")
        if spec.fused_gate_up:
            gate_w, up_w = _split_gate_up(layer["ffn_up.weight"])
        else:
            gate_w, up_w = layer.get("ffn_gate.weight"), layer["ffn_up.weight"]
        u = _linear(h, up_w, None if spec.fused_gate_up else layer.get("ffn_up.bias"))
        if gate_w is None:
            a = act(u)
            out.append((a, a))
        else:
            a = act(_linear(h, gate_w))
            out.append((a, a * u))
    return out


def router_probs(spec: ModelSpec, tokens: Sequence[int], acts: Sequence[ActEntry] | None = None, *,
                 wiring: Sequence[Wiring] | None = None) -> list[np.ndarray]:
    """For an MoE model: per layer the router probabilities [T, n_expert] under the wiring,
    softmax(W_inp h) with the logits of that layer's experts_off at -inf."""
    if not spec.n_expert:
        raise ValueError("MoE models only")
    _, ffn_inputs = _blocks(spec, tokens, acts, wiring)
    return [_router_probs(layer, h, w.get("experts_off", ()))
            for layer, h, w in zip(spec.layers, ffn_inputs, _wirings(spec, acts, wiring))]


def router_margin(spec: ModelSpec, tokens: Sequence[int], acts: Sequence[ActEntry] | None = None, *,
                  wiring: Sequence[Wiring] | None = None) -> float:
    """Smallest gap between the k-th and (k+1)-th router probability over all tokens and
    layers (inf for dense models), under each layer's wiring: its k (experts_used) and its
    experts_off mask; layers whose FFN is skipped, or where k keeps every expert left on, do
    not count.  A gap near float32 precision (~1e-6) means llama.cpp may select other experts
    than the reference."""
    if not spec.n_expert:
        return math.inf
    margins = [math.inf]
    for probs, w in zip(router_probs(spec, tokens, acts, wiring=wiring), _wirings(spec, acts, wiring)):
        k = _experts_used(spec, w)
        if w.get("skip_ffn", False) or k >= spec.n_expert - len(set(w.get("experts_off", ()))):
            continue
        p = -np.sort(-probs, axis=-1)  # descending
        margins.append(float(np.min(p[:, k - 1] - p[:, k])))
    return min(margins)
