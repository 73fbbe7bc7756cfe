"""Tiny random GGUF models for tests.

Each ``write_*`` function writes an F32 GGUF file that llama.cpp loads, and
returns a :class:`ModelSpec` holding the exact (float32) weights that were
written plus the hyperparameters, so that ``numpy_ref.forward`` can run the
same model without re-reading the file.

Weight layout: a GGUF tensor with ggml shape ``{ne0, ne1, ne2}`` is stored as
a numpy array of shape ``(ne2, ne1, ne0)``.  A linear layer ``W`` therefore has
numpy shape ``(n_out, n_in)`` and computes ``y = W @ x``; expert tensors have
shape ``(n_expert, n_out, n_in)``.

Weight names in the spec are the GGUF tensor names: global tensors live in
``spec.tensors`` (``"token_embd.weight"``, ...) and per-layer tensors in
``spec.layers[il]`` without the ``"blk.{il}."`` prefix (``"ffn_up.weight"``).

Scaling: embeddings are N(0, 1), norm weights are ~1, and every projection is
N(0, 1/n_in), so the input of every FFN activation is O(1) and the choice of
activation changes the logits at O(1) level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

# llama.cpp token types (llama_token_type in llama.h)
_TT_NORMAL, _TT_UNKNOWN, _TT_CONTROL, _TT_BYTE = 1, 2, 3, 6


@dataclass
class ModelSpec:
    """Everything the numpy reference needs to run one tiny model."""

    arch: str                 # GGUF architecture: "llama", "gpt2", "qwen2moe", "phi3", "hy_v3", "gemma3"
                              # or "mamba"
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int                 # dense FFN width (llama/gpt2/phi3: the width of ONE half of a
                              # fused gate+up), expert width for MoE
    n_ctx_train: int
    norm: str                 # "rms" (RMSNorm, weight only) or "layer" (LayerNorm with bias)
    norm_eps: float
    rope: str | None          # "norm" (adjacent pairs), "neox" (half split) or None (learned positions)
    rope_freq_base: float
    default_act: str          # the architecture's own FFN activation (key of numpy_ref.ACTIVATIONS)
    gated: bool               # True: down(act(gate(x)) * up(x)); False: down(act(up(x)))
    n_expert: int = 0         # 0 = dense FFN
    n_expert_used: int = 0
    expert_weights_norm: bool = False  # renormalise the top-k softmax weights to sum 1
    n_ff_shexp: int = 0       # shared-expert width, 0 = no shared expert
    # gate and up live in ONE tensor whose first half (rows) is the gate and second half the up:
    # dense "ffn_up.weight" of shape (2 n_ff, n_embd) (phi3), or "ffn_gate_up_exps.weight" of
    # shape (n_expert, 2 n_ff, n_embd) (merged experts); the FFN is act(first half) * second half
    fused_gate_up: bool = False
    qk_norm: bool = False     # RMSNorm (weights attn_q_norm / attn_k_norm) on every Q and K head, before RoPE
    embd_scale: float = 1.0   # token embedding rows are multiplied by this (gemma3: sqrt(n_embd))
    # norm (weights post_attention_norm / post_ffw_norm) of each sublayer's output, before the residual add:
    # x = x + post_norm(attn(norm(x))); x = x + post_norm(ffn(norm(x)))
    post_norm: bool = False
    # sliding-window attention: on the layers il with swa_layers[il], query i sees key j only when
    # i - j < n_swa, and RoPE uses rope_freq_base_swa instead of rope_freq_base
    n_swa: int = 0
    swa_layers: list[bool] = field(default_factory=list)
    rope_freq_base_swa: float = 10000.0
    # selective state-space (Mamba) mixer in place of attention, 0 = none: the causal conv1d width,
    # the inner width (2 n_embd), the state size per inner channel and the rank of the dt projection
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_dt_rank: int = 0
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]


# ---------------------------------------------------------------- random weights

class _Init:
    """Deterministic float32 weight factory."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def linear(self, n_out: int, n_in: int, n_expert: int = 0) -> np.ndarray:
        """N(0, 1/n_in): keeps the output O(1) for an O(1) input."""
        shape = (n_expert, n_out, n_in) if n_expert else (n_out, n_in)
        return self._f32(self.rng.standard_normal(shape) / np.sqrt(n_in))

    def norm_weight(self, n: int) -> np.ndarray:
        return self._f32(1.0 + 0.1 * self.rng.standard_normal(n))

    def bias(self, n: int, scale: float = 0.1) -> np.ndarray:
        return self._f32(scale * self.rng.standard_normal(n))

    def normal(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return self._f32(scale * self.rng.standard_normal(shape))

    @staticmethod
    def _f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------- vocabularies

def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> printable unicode mapping (bytes_to_unicode), in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _add_spm_vocab(w: gguf.GGUFWriter) -> int:
    """SentencePiece ("llama") vocab: <unk> <s> </s>, the 256 byte tokens, and "▁"."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    types = [_TT_UNKNOWN, _TT_CONTROL, _TT_CONTROL] + [_TT_BYTE] * 256 + [_TT_NORMAL]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    return len(tokens)


def _add_bpe_vocab(w: gguf.GGUFWriter) -> int:
    """GPT-2 BPE vocab: the 256 byte tokens, one merge ("ĠĠ") and <|endoftext|>."""
    tokens = [*_gpt2_byte_chars(), "ĠĠ", "<|endoftext|>"]
    types = [_TT_NORMAL] * 257 + [_TT_CONTROL]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["\u0120 \u0120"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    return len(tokens)


SPM_VOCAB_SIZE = 260
BPE_VOCAB_SIZE = 258


# ---------------------------------------------------------------- writing

def _write(path: str | Path, spec: ModelSpec, add_vocab, add_hparams, name: str | None = None) -> None:
    """Write metadata, vocab and every tensor of ``spec`` to ``path``."""
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name(name or f"tiny-{spec.arch}")
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_hparams(w)
    n_vocab = add_vocab(w)
    assert n_vocab == spec.n_vocab, (n_vocab, spec.n_vocab)
    for tensor_name, arr in spec.tensors.items():
        w.add_tensor(tensor_name, arr)
    for il, layer in enumerate(spec.layers):
        for tensor_name, arr in layer.items():
            w.add_tensor(f"blk.{il}.{tensor_name}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_attn(init: _Init, n_embd: int, n_head: int, n_head_kv: int,
                qkv_bias: bool) -> dict[str, np.ndarray]:
    """Separate Q/K/V/O projections (GQA: K and V have n_head_kv heads)."""
    hd = n_embd // n_head
    t = {
        "attn_norm.weight": init.norm_weight(n_embd),
        "attn_q.weight": init.linear(n_head * hd, n_embd),
        "attn_k.weight": init.linear(n_head_kv * hd, n_embd),
        "attn_v.weight": init.linear(n_head_kv * hd, n_embd),
        "attn_output.weight": init.linear(n_embd, n_head * hd),
    }
    if qkv_bias:
        t["attn_q.bias"] = init.bias(n_head * hd)
        t["attn_k.bias"] = init.bias(n_head_kv * hd)
        t["attn_v.bias"] = init.bias(n_head_kv * hd)
    return t


def _rms_head(init: _Init, n_vocab: int, n_embd: int) -> dict[str, np.ndarray]:
    return {
        "token_embd.weight": init.normal(n_vocab, n_embd),
        "output_norm.weight": init.norm_weight(n_embd),
        "output.weight": init.linear(n_vocab, n_embd),
    }


def write_llama(path: str | Path, seed: int = 0, n_layer: int = 3, n_embd: int = 64,
                n_head: int = 4, n_head_kv: int = 2, n_ff: int = 160,
                n_ctx_train: int = 256, norm_eps: float = 1e-5,
                rope_freq_base: float = 10000.0) -> ModelSpec:
    """Dense llama: RMSNorm, RoPE (adjacent pairs), GQA, SwiGLU FFN, untied output."""
    init = _Init(seed)
    spec = ModelSpec(arch="llama", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="norm", rope_freq_base=rope_freq_base,
                     default_act="silu", gated=True)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    for _ in range(n_layer):
        layer = _llama_attn(init, n_embd, n_head, n_head_kv, qkv_bias=False)
        layer["ffn_norm.weight"] = init.norm_weight(n_embd)
        layer["ffn_gate.weight"] = init.linear(n_ff, n_embd)
        layer["ffn_up.weight"] = init.linear(n_ff, n_embd)
        layer["ffn_down.weight"] = init.linear(n_embd, n_ff)
        spec.layers.append(layer)

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_rope_dimension_count(spec.head_dim)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


def write_gpt2(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
               n_head: int = 4, n_ff: int = 192, n_ctx_train: int = 256,
               norm_eps: float = 1e-5) -> ModelSpec:
    """GPT-2: LayerNorm (+bias), learned positions, fused QKV (+bias), GELU MLP (+biases)."""
    init = _Init(seed)
    spec = ModelSpec(arch="gpt2", n_vocab=BPE_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head, n_ff=n_ff, n_ctx_train=n_ctx_train,
                     norm="layer", norm_eps=norm_eps, rope=None, rope_freq_base=10000.0,
                     default_act="gelu", gated=False)
    spec.tensors = {
        "token_embd.weight": init.normal(spec.n_vocab, n_embd),
        "position_embd.weight": init.normal(n_ctx_train, n_embd, scale=0.5),
        "output_norm.weight": init.norm_weight(n_embd),
        "output_norm.bias": init.bias(n_embd),
        "output.weight": init.linear(spec.n_vocab, n_embd),
    }
    for _ in range(n_layer):
        spec.layers.append({
            "attn_norm.weight": init.norm_weight(n_embd),
            "attn_norm.bias": init.bias(n_embd),
            "attn_qkv.weight": init.linear(3 * n_embd, n_embd),  # rows: [Q; K; V]
            "attn_qkv.bias": init.bias(3 * n_embd),
            "attn_output.weight": init.linear(n_embd, n_embd),
            "attn_output.bias": init.bias(n_embd),
            "ffn_norm.weight": init.norm_weight(n_embd),
            "ffn_norm.bias": init.bias(n_embd),
            "ffn_up.weight": init.linear(n_ff, n_embd),
            "ffn_up.bias": init.bias(n_ff),
            "ffn_down.weight": init.linear(n_embd, n_ff),
            "ffn_down.bias": init.bias(n_embd),
        })

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_eps(norm_eps)

    _write(path, spec, _add_bpe_vocab, hparams)
    return spec


def write_moe(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
              n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_expert: int = 4,
              n_expert_used: int = 2, n_ctx_train: int = 256, norm_eps: float = 1e-5,
              rope_freq_base: float = 10000.0) -> ModelSpec:
    """Mixtral-style llama MoE: softmax router, top-k, weights renormalised, SwiGLU experts."""
    init = _Init(seed)
    spec = ModelSpec(arch="llama", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="norm", rope_freq_base=rope_freq_base,
                     default_act="silu", gated=True, n_expert=n_expert,
                     n_expert_used=n_expert_used, expert_weights_norm=True)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    for _ in range(n_layer):
        layer = _llama_attn(init, n_embd, n_head, n_head_kv, qkv_bias=False)
        layer["ffn_norm.weight"] = init.norm_weight(n_embd)
        layer.update(_experts(init, n_embd, n_ff, n_expert))
        spec.layers.append(layer)

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_rope_dimension_count(spec.head_dim)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


def _experts(init: _Init, n_embd: int, n_ff: int, n_expert: int) -> dict[str, np.ndarray]:
    """Router plus stacked SwiGLU experts, each of shape (n_expert, n_out, n_in)."""
    return {
        "ffn_gate_inp.weight": init.linear(n_expert, n_embd),
        "ffn_gate_exps.weight": init.linear(n_ff, n_embd, n_expert),
        "ffn_up_exps.weight": init.linear(n_ff, n_embd, n_expert),
        "ffn_down_exps.weight": init.linear(n_embd, n_ff, n_expert),
    }


def write_moe_shared(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                     n_head: int = 4, n_head_kv: int = 2, n_ff_exp: int = 64,
                     n_ff_shexp: int = 128, n_expert: int = 4, n_expert_used: int = 2,
                     n_ctx_train: int = 256, norm_eps: float = 1e-6,
                     rope_freq_base: float = 10000.0) -> ModelSpec:
    """qwen2moe: RoPE (neox), Q/K/V biases, top-k experts WITHOUT weight renormalisation,
    plus a shared SwiGLU expert scaled by sigmoid(ffn_gate_inp_shexp . x)."""
    init = _Init(seed)
    spec = ModelSpec(arch="qwen2moe", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff_exp, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="neox", rope_freq_base=rope_freq_base,
                     default_act="silu", gated=True, n_expert=n_expert,
                     n_expert_used=n_expert_used, expert_weights_norm=False,
                     n_ff_shexp=n_ff_shexp)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    for _ in range(n_layer):
        layer = _llama_attn(init, n_embd, n_head, n_head_kv, qkv_bias=True)
        layer["ffn_norm.weight"] = init.norm_weight(n_embd)
        layer.update(_experts(init, n_embd, n_ff_exp, n_expert))
        layer["ffn_gate_inp_shexp.weight"] = init.linear(1, n_embd)[0]  # ggml shape {n_embd}
        layer["ffn_gate_shexp.weight"] = init.linear(n_ff_shexp, n_embd)
        layer["ffn_up_shexp.weight"] = init.linear(n_ff_shexp, n_embd)
        layer["ffn_down_shexp.weight"] = init.linear(n_embd, n_ff_shexp)
        spec.layers.append(layer)

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_feed_forward_length(n_ff_shexp)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


def write_phi3(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
               n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 256,
               norm_eps: float = 1e-5, rope_freq_base: float = 10000.0) -> ModelSpec:
    """phi3: RMSNorm, RoPE (neox), fused QKV (GQA, no bias), untied output, and ONE fused
    gate+up tensor ``ffn_up.weight`` of shape (2 n_ff, n_embd): rows [gate; up].  llama.cpp
    runs it as LLM_FFN_SWIGLU = ggml_swiglu: silu(first half) * second half."""
    init = _Init(seed)
    spec = ModelSpec(arch="phi3", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="neox", rope_freq_base=rope_freq_base,
                     default_act="silu", gated=True, fused_gate_up=True)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    hd = n_embd // n_head
    for _ in range(n_layer):
        spec.layers.append({
            "attn_norm.weight": init.norm_weight(n_embd),
            "attn_qkv.weight": init.linear((n_head + 2 * n_head_kv) * hd, n_embd),  # rows: [Q; K; V]
            "attn_output.weight": init.linear(n_embd, n_head * hd),
            "ffn_norm.weight": init.norm_weight(n_embd),
            "ffn_up.weight": np.concatenate([init.linear(n_ff, n_embd),    # gate
                                             init.linear(n_ff, n_embd)]),  # up
            "ffn_down.weight": init.linear(n_embd, n_ff),
        })

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_rope_dimension_count(spec.head_dim)

    # not "tiny-phi3": llama.cpp's vocab loader special-cases general.name containing "phi3" /
    # "phi-3" and then requires an "<|endoftext|>" token (unordered_map::at otherwise)
    _write(path, spec, _add_spm_vocab, hparams, name="tiny-phi-three")
    return spec


def write_moe_merged(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                     n_head: int = 4, n_head_kv: int = 2, n_ff_exp: int = 64,
                     n_ff_shexp: int = 96, n_expert: int = 4, n_expert_used: int = 2,
                     n_ctx_train: int = 256, norm_eps: float = 1e-5,
                     rope_freq_base: float = 10000.0) -> ModelSpec:
    """hy_v3 (the simplest architecture whose experts load a merged ``ffn_gate_up_exps``):
    RMSNorm, separate Q/K/V (no bias), per-head RMSNorm of Q and K before RoPE (neox),
    softmax router (set via expert_gating_func; the arch default is sigmoid), top-k with the
    weights renormalised, SwiGLU experts whose gate and up are ONE tensor of shape
    (n_expert, 2 n_ff_exp, n_embd) (rows [gate; up] per expert: build_moe_ffn splits it into two
    non-contiguous views), plus an always-on, UNgated shared SwiGLU expert."""
    init = _Init(seed)
    spec = ModelSpec(arch="hy_v3", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff_exp, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="neox", rope_freq_base=rope_freq_base,
                     default_act="silu", gated=True, n_expert=n_expert,
                     n_expert_used=n_expert_used, expert_weights_norm=True,
                     n_ff_shexp=n_ff_shexp, fused_gate_up=True, qk_norm=True)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    hd = spec.head_dim
    for _ in range(n_layer):
        layer = _llama_attn(init, n_embd, n_head, n_head_kv, qkv_bias=False)
        layer["attn_q_norm.weight"] = init.norm_weight(hd)
        layer["attn_k_norm.weight"] = init.norm_weight(hd)
        layer["ffn_norm.weight"] = init.norm_weight(n_embd)
        layer["ffn_gate_inp.weight"] = init.linear(n_expert, n_embd)
        layer["ffn_gate_up_exps.weight"] = np.concatenate(
            [init.linear(n_ff_exp, n_embd, n_expert),   # gate of every expert
             init.linear(n_ff_exp, n_embd, n_expert)],  # up of every expert
            axis=1)
        layer["ffn_down_exps.weight"] = init.linear(n_embd, n_ff_exp, n_expert)
        layer["ffn_gate_shexp.weight"] = init.linear(n_ff_shexp, n_embd)
        layer["ffn_up_shexp.weight"] = init.linear(n_ff_shexp, n_embd)
        layer["ffn_down_shexp.weight"] = init.linear(n_embd, n_ff_shexp)
        spec.layers.append(layer)

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_rope_dimension_count(hd)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
        w.add_expert_weights_norm(True)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


def write_gemma3(path: str | Path, seed: int = 0, n_layer: int = 4, n_embd: int = 64,
                 n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 256,
                 norm_eps: float = 1e-6, rope_freq_base: float = 1_000_000.0,
                 rope_freq_base_swa: float = 10_000.0, n_swa: int = 5, swa_pattern: int = 2) -> ModelSpec:
    """gemma3: embeddings scaled by sqrt(n_embd), RMSNorm everywhere (the weights are used as stored:
    llama.cpp's converter has already added Gemma's 1), per-head Q/K RMSNorm before RoPE (neox),
    GQA with scale 1/sqrt(head_dim), post-norms on the attention and FFN outputs before each residual
    add, a GELU(tanh)-gated FFN down(gelu(gate x) * up x), and the output tied to token_embd.

    Of every ``swa_pattern`` layers the last is global (il % swa_pattern == swa_pattern - 1, llama.cpp's
    rule) and the others use a sliding window of ``n_swa`` positions and RoPE base ``rope_freq_base_swa``.
    Embeddings are N(0, 1/n_embd), so the scaled rows, and the tied logits, are O(1).
    """
    init = _Init(seed)
    swa_layers = [il % swa_pattern < swa_pattern - 1 for il in range(n_layer)]
    spec = ModelSpec(arch="gemma3", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope="neox", rope_freq_base=rope_freq_base,
                     default_act="gelu", gated=True, qk_norm=True, embd_scale=math.sqrt(n_embd),
                     post_norm=True, n_swa=n_swa, swa_layers=swa_layers,
                     rope_freq_base_swa=rope_freq_base_swa)
    spec.tensors = {
        "token_embd.weight": init.normal(spec.n_vocab, n_embd, scale=1.0 / math.sqrt(n_embd)),
        "output_norm.weight": init.norm_weight(n_embd),
    }
    hd = spec.head_dim
    for _ in range(n_layer):
        layer = _llama_attn(init, n_embd, n_head, n_head_kv, qkv_bias=False)
        layer["attn_q_norm.weight"] = init.norm_weight(hd)
        layer["attn_k_norm.weight"] = init.norm_weight(hd)
        layer["post_attention_norm.weight"] = init.norm_weight(n_embd)
        layer["ffn_norm.weight"] = init.norm_weight(n_embd)
        layer["ffn_gate.weight"] = init.linear(n_ff, n_embd)
        layer["ffn_up.weight"] = init.linear(n_ff, n_embd)
        layer["ffn_down.weight"] = init.linear(n_embd, n_ff)
        layer["post_ffw_norm.weight"] = init.norm_weight(n_embd)
        spec.layers.append(layer)

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_rope_freq_base(rope_freq_base)
        w.add_rope_freq_base_swa(rope_freq_base_swa)
        w.add_sliding_window(n_swa)
        w.add_sliding_window_pattern(swa_pattern)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


def write_mamba(path: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                d_state: int = 16, d_conv: int = 4, dt_rank: int | None = None,
                n_ctx_train: int = 256, norm_eps: float = 1e-5) -> ModelSpec:
    """mamba (Mamba-1): no attention and no FFN; every layer is x = x + mixer(rmsnorm(x)) with the
    selective-SSM mixer of width d_inner = 2 n_embd (the only expansion llama.cpp supports):
    [x; z] = ssm_in h, x = silu(causal_conv1d(x) + conv_b), [dt; B; C] = ssm_x x,
    dt = softplus(ssm_dt dt + dt_b), the scan s = exp(dt A) s + dt B x, y = C s + D x, and
    out = ssm_out (y * silu(z)).  Then the final RMSNorm and an untied output.

    Like llama.cpp's converter the file says head_count = feed_forward_length = 0.  The
    initialisation follows Mamba's: A = -[1..d_state] on every channel (stored as A, i.e. already
    -exp(A_log)), D = 1, and dt_b = softplus^-1 of a log-uniform dt in [1e-3, 1e-1].
    """
    init = _Init(seed)
    d_inner = 2 * n_embd
    dt_rank = dt_rank or -(n_embd // -16)  # ceil(n_embd / 16), the Mamba default
    spec = ModelSpec(arch="mamba", n_vocab=SPM_VOCAB_SIZE, n_embd=n_embd, n_layer=n_layer,
                     n_head=0, n_head_kv=0, n_ff=0, n_ctx_train=n_ctx_train,
                     norm="rms", norm_eps=norm_eps, rope=None, rope_freq_base=10000.0,
                     default_act="silu", gated=False, ssm_d_conv=d_conv, ssm_d_inner=d_inner,
                     ssm_d_state=d_state, ssm_dt_rank=dt_rank)
    spec.tensors = _rms_head(init, spec.n_vocab, n_embd)
    a = -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1))
    for _ in range(n_layer):
        dt = np.exp(init.rng.uniform(math.log(1e-3), math.log(1e-1), d_inner))
        spec.layers.append({
            "attn_norm.weight": init.norm_weight(n_embd),
            "ssm_in.weight": init.linear(2 * d_inner, n_embd),              # rows: [x; z]
            "ssm_conv1d.weight": init.linear(d_inner, d_conv),              # ggml {d_conv, d_inner}
            "ssm_conv1d.bias": init.bias(d_inner),
            "ssm_x.weight": init.linear(dt_rank + 2 * d_state, d_inner),    # rows: [dt; B; C]
            "ssm_dt.weight": init.linear(d_inner, dt_rank),
            "ssm_dt.bias": init._f32(dt + np.log(-np.expm1(-dt))),          # softplus^-1(dt)
            "ssm_a": init._f32(a),                                          # ggml {d_state, d_inner}
            "ssm_d": init._f32(np.ones(d_inner)),
            "ssm_out.weight": init.linear(n_embd, d_inner),
        })

    def hparams(w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(norm_eps)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(dt_rank)
        w.add_ssm_dt_b_c_rms(False)

    _write(path, spec, _add_spm_vocab, hparams)
    return spec


WRITERS = {
    "llama": write_llama,
    "gpt2": write_gpt2,
    "moe": write_moe,
    "moe_shared": write_moe_shared,
    "phi3": write_phi3,
    "moe_merged": write_moe_merged,
    "gemma3": write_gemma3,
    "mamba": write_mamba,
}
