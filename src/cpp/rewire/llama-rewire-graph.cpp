// llama-rewire: building an overridden FFN activation out of ggml ops every backend has.
#include "llama-rewire-graph.h"

#include <cmath>

#include "llama-cparams.h"
#include "llama-hparams.h"
#include "llama-model.h"

#include "ggml.h"

std::shared_ptr<llama_rewire_state> llama_rewire_state_init(const llama_model & model) {
    const uint32_t n_layer = model.hparams.n_layer();
    auto state = std::make_shared<llama_rewire_state>();
    state->layers.resize(n_layer);
    state->ffn.resize(n_layer);
    state->model.resize(n_layer);
    state->resid.resize((size_t) n_layer * LLAMA_REWIRE_POINT_COUNT);
    for (uint32_t il = 0; il < n_layer && il < model.layers.size(); ++il) {
        const llama_layer & layer = model.layers[il];
        llama_rewire_state::shape & s = state->model[il];
        s.attn_post_w    = layer.attn_post_norm;
        s.ffn_post_w     = layer.ffn_post_norm;
        s.attn_post_norm = layer.attn_post_norm != nullptr;
        s.ffn_post_norm  = layer.ffn_post_norm != nullptr;
        s.moe            = layer.ffn_up_exps != nullptr || layer.ffn_gate_up_exps != nullptr ||
                           layer.ffn_down_exps != nullptr;
        s.shexp          = s.moe && (layer.ffn_up_shexp != nullptr || layer.ffn_down_shexp != nullptr);
        s.n_ff           = (int32_t) model.hparams.n_ff(il);
    }
    return state;
}

const llama_rewire_layer_slot * llama_rewire_layer_of(const llama_cparams & cparams, int il) {
    const llama_rewire_state * state = cparams.rewire.get();
    if (state == nullptr || !state->active || il < 0 || (size_t) il >= state->layers.size()) {
        return nullptr;
    }
    return &state->layers[il];
}

// The longest named activation below is mish with a threshold on a non-contiguous gated input: cont,
// clamp, exp, scale_bias, mul, scale_bias, div, mul, abs, scale_bias, step, mul, mul = 13 nodes. An
// expression adds at most LLAMA_REWIRE_EXPR_MAX_NODES plus the fused halves' two views, cont, threshold
// (4) and product: 8 more; the budget keeps a margin. A layer can hold two FFNs (shared expert + routed
// experts). The other knobs add, per layer: two scales, the head mask (2 reshapes, mul), the expert mask
// (2 adds); their inputs are leaves.
static constexpr uint32_t REWIRE_MAX_NODES_PER_FFN   = LLAMA_REWIRE_EXPR_MAX_NODES + 12;
static constexpr uint32_t REWIRE_MAX_NODES_PER_LAYER = 16;
// a residual-stream point: cont, reshape, patch (mul, add), ablation (2 mul_mat, mul, sub), add, reshape back
static constexpr uint32_t REWIRE_MAX_NODES_PER_POINT = 12;

uint32_t llama_rewire_max_extra_nodes(uint32_t n_layer) {
    return (2 * REWIRE_MAX_NODES_PER_FFN + REWIRE_MAX_NODES_PER_LAYER +
            LLAMA_REWIRE_POINT_COUNT * REWIRE_MAX_NODES_PER_POINT) * n_layer;
}

static void rewire_name(ggml_tensor * t, const char * what, int il) {
    ggml_format_name(t, "ffn_rewire_%s-%d", what, il);
}

// The fused GLU op that computes act(a) * b in one kernel, if there is one for this activation.
static bool rewire_glu_op(llama_rewire_act act, ggml_glu_op * op) {
    if (act.threshold > 0.0f) {
        return false; // the activation must exist as a tensor of its own to be thresholded
    }
    switch (act.type) {
        case LLAMA_REWIRE_ACT_SILU:       *op = GGML_GLU_OP_SWIGLU;      return true;
        case LLAMA_REWIRE_ACT_GELU:       *op = GGML_GLU_OP_GEGLU;       return true;
        case LLAMA_REWIRE_ACT_GELU_ERF:   *op = GGML_GLU_OP_GEGLU_ERF;   return true;
        case LLAMA_REWIRE_ACT_GELU_QUICK: *op = GGML_GLU_OP_GEGLU_QUICK; return true;
        case LLAMA_REWIRE_ACT_RELU:       *op = GGML_GLU_OP_REGLU;       return true;
        case LLAMA_REWIRE_ACT_SWISH:
            if (act.param == 1.0f) {
                *op = GGML_GLU_OP_SWIGLU;
                return true;
            }
            return false;
        default:
            return false;
    }
}

static ggml_tensor * rewire_glu_split(ggml_context * ctx, ggml_glu_op op, ggml_tensor * a, ggml_tensor * b) {
    switch (op) {
        case GGML_GLU_OP_SWIGLU:      return ggml_swiglu_split(ctx, a, b);
        case GGML_GLU_OP_GEGLU:       return ggml_geglu_split(ctx, a, b);
        case GGML_GLU_OP_GEGLU_ERF:   return ggml_geglu_erf_split(ctx, a, b);
        case GGML_GLU_OP_GEGLU_QUICK: return ggml_geglu_quick_split(ctx, a, b);
        case GGML_GLU_OP_REGLU:       return ggml_reglu_split(ctx, a, b);
        default:                      return nullptr; // not reached: rewire_glu_op only returns the above
    }
}

// act(x) elementwise. x is contiguous (unary kernels on GPU backends require it).
static ggml_tensor * rewire_unary(ggml_context * ctx, const llama_rewire_act_slot & slot, ggml_tensor * x, int il) {
    const llama_rewire_act act = slot.act;
    const float p = act.param;
    ggml_tensor * t = nullptr;
    switch (act.type) {
        case LLAMA_REWIRE_ACT_EXPR:        return llama_rewire_build_expr(ctx, slot.expr, x, il);
        case LLAMA_REWIRE_ACT_SILU:        return ggml_silu(ctx, x);
        case LLAMA_REWIRE_ACT_GELU:        return ggml_gelu(ctx, x);
        case LLAMA_REWIRE_ACT_GELU_ERF:    return ggml_gelu_erf(ctx, x);
        case LLAMA_REWIRE_ACT_GELU_QUICK:  return ggml_gelu_quick(ctx, x);
        case LLAMA_REWIRE_ACT_RELU:        return ggml_relu(ctx, x);
        case LLAMA_REWIRE_ACT_TANH:        return ggml_tanh(ctx, x);
        case LLAMA_REWIRE_ACT_SIGMOID:     return ggml_sigmoid(ctx, x);
        case LLAMA_REWIRE_ACT_HARDSWISH:   return ggml_hardswish(ctx, x);
        case LLAMA_REWIRE_ACT_HARDSIGMOID: return ggml_hardsigmoid(ctx, x);
        case LLAMA_REWIRE_ACT_IDENTITY:    return x;
        case LLAMA_REWIRE_ACT_LEAKY_RELU:  return ggml_leaky_relu(ctx, x, p, false);
        case LLAMA_REWIRE_ACT_RELU2:
            // relu(x)^2
            t = ggml_relu(ctx, x);
            rewire_name(t, "relu", il);
            return ggml_sqr(ctx, t);
        case LLAMA_REWIRE_ACT_ELU:
            {
                // ggml_elu has alpha = 1: elu(x) = x > 0 ? x : exp(x) - 1, so
                // elu_alpha(x) = relu(x) + alpha (elu(x) - relu(x)) = (1 - alpha) relu(x) + alpha elu(x)
                if (p == 1.0f) {
                    return ggml_elu(ctx, x);
                }
                ggml_tensor * e = ggml_scale(ctx, ggml_elu(ctx, x), p);
                rewire_name(e, "elu", il);
                ggml_tensor * r = ggml_scale(ctx, ggml_relu(ctx, x), 1.0f - p);
                rewire_name(r, "relu", il);
                return ggml_add(ctx, e, r);
            }
        case LLAMA_REWIRE_ACT_SOFTPLUS:
            // softplus_beta(x) = softplus(beta x) / beta
            if (p == 1.0f) {
                return ggml_softplus(ctx, x);
            }
            t = ggml_softplus(ctx, ggml_scale(ctx, x, p));
            rewire_name(t, "softplus", il);
            return ggml_scale(ctx, t, 1.0f / p);
        case LLAMA_REWIRE_ACT_MISH: {
            // x tanh(softplus(x)) = x n/(n + 2) with n = e^x (e^x + 2): one exp instead of exp, log1p
            // and tanh (scalar libm calls on the CPU), the rest cheap vectorized element-wise ops.
            // Beyond x = 20 the ratio is 1 in float; clamping keeps e^x (and n/n) finite.
            ggml_tensor * e = ggml_exp(ctx, ggml_clamp(ctx, x, -INFINITY, 20.0f));
            ggml_tensor * n = ggml_mul(ctx, e, ggml_scale_bias(ctx, e, 1.0f, 2.0f));
            t = ggml_div(ctx, n, ggml_scale_bias(ctx, n, 1.0f, 2.0f));
            rewire_name(t, "tanh_softplus", il);
            return ggml_mul(ctx, x, t);
        }
        case LLAMA_REWIRE_ACT_SWISH:
            // x sigmoid(beta x)
            if (p == 1.0f) {
                return ggml_silu(ctx, x);
            }
            t = ggml_sigmoid(ctx, ggml_scale(ctx, x, p));
            rewire_name(t, "sigmoid", il);
            return ggml_mul(ctx, x, t);
        case LLAMA_REWIRE_ACT_DEFAULT:
        case LLAMA_REWIRE_ACT_COUNT:
            break;
    }
    return nullptr; // not reached: the table is validated before it is stored
}

// a where |a| > t, else 0:  a * step(|a| - t)
static ggml_tensor * rewire_threshold(ggml_context * ctx, ggml_tensor * a, float t, int il) {
    ggml_tensor * keep = ggml_step(ctx, ggml_scale_bias(ctx, ggml_abs(ctx, a), 1.0f, -t));
    rewire_name(keep, "keep", il);
    return ggml_mul(ctx, a, keep);
}

// act(x), thresholded if asked, as a node named ffn_rewire_act-<il> (observers look for that name)
static ggml_tensor * rewire_activation(ggml_context * ctx, const llama_rewire_act_slot & slot, ggml_tensor * x, int il) {
    const llama_rewire_act act = slot.act;
    ggml_tensor * a = rewire_unary(ctx, slot, x, il);
    if (act.threshold > 0.0f) {
        if (a == x) {
            a = ggml_scale(ctx, x, 1.0f); // identity: a node of its own to be named
        }
        rewire_name(a, "raw", il); // before thresholding
        a = rewire_threshold(ctx, a, act.threshold, il);
    } else if (a == x) {
        a = ggml_scale(ctx, x, 1.0f); // identity: keep a node of its own
    }
    rewire_name(a, "act", il);
    return a;
}

static ggml_tensor * rewire_contiguous(ggml_context * ctx, ggml_tensor * t, int il) {
    if (ggml_is_contiguous(t)) {
        return t;
    }
    t = ggml_cont(ctx, t);
    rewire_name(t, "cont", il);
    return t;
}

static void rewire_record(const llama_hparams & hparams, llama_rewire_state & state, int il,
                          llm_ffn_op_type type_op, llama_rewire_ffn_kind kind, llama_rewire_scope scope,
                          bool gated, bool fused) {
    llama_rewire_state::seen & s = state.ffn[il];
    s.kinds |= kind;
    s.scopes[scope] = true;
    s.op     = type_op;
    s.gated  = gated || fused;
    s.fused  = fused;
    if (type_op == LLM_FFN_SILU && gated) {
        const float limit = kind == LLAMA_REWIRE_FFN_MOE ? hparams.swiglu_clamp_exp[il] : hparams.swiglu_clamp_shexp[il];
        s.clamped = s.clamped || limit > 1e-6f;
    }
}

ggml_tensor * llama_rewire_build_ffn_act(
        ggml_context        * ctx,
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        int                   il,
        llm_ffn_op_type       type_op,
        llama_rewire_ffn_kind kind,
        ggml_tensor         * gate,
        ggml_tensor         * up) {
    llama_rewire_state * state = cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->layers.size()) {
        return nullptr;
    }

    const llama_rewire_scope scope = kind == LLAMA_REWIRE_FFN_MOE ? LLAMA_REWIRE_SCOPE_EXPERTS
                                   : state->model[il].moe          ? LLAMA_REWIRE_SCOPE_SHARED
                                   :                                 LLAMA_REWIRE_SCOPE_DENSE;
    const bool fused = up == nullptr &&
        (type_op == LLM_FFN_SWIGLU || type_op == LLM_FFN_GEGLU || type_op == LLM_FFN_REGLU);
    rewire_record(hparams, *state, il, type_op, kind, scope, up != nullptr, fused);

    if (!state->active) {
        return nullptr;
    }
    const llama_rewire_act_slot & slot = state->layers[il].act[scope];
    const llama_rewire_act act = slot.act;
    if (act.type == LLAMA_REWIRE_ACT_DEFAULT) {
        return nullptr;
    }

    if (fused) {
        // one tensor [2 n_ff, ...]: act(first half) * second half
        ggml_glu_op op;
        if (rewire_glu_op(act, &op)) {
            return ggml_glu(ctx, gate, op, false);
        }
        const int64_t n_ff = gate->ne[0] / 2;
        ggml_tensor * g = ggml_view_3d(ctx, gate, n_ff, gate->ne[1], gate->ne[2], gate->nb[1], gate->nb[2], 0);
        ggml_tensor * u = ggml_view_3d(ctx, gate, n_ff, gate->ne[1], gate->ne[2], gate->nb[1], gate->nb[2],
                                       n_ff * ggml_element_size(gate));
        rewire_name(g, "gate", il);
        rewire_name(u, "up", il);
        gate = g;
        up   = u;
    }

    if (up == nullptr) {
        return rewire_activation(ctx, slot, rewire_contiguous(ctx, gate, il), il);
    }

    ggml_glu_op op;
    if (rewire_glu_op(act, &op)) {
        // the fused kernels take strided views, like upstream's merged gate_up experts
        return rewire_glu_split(ctx, op, gate, up);
    }
    ggml_tensor * a = rewire_activation(ctx, slot, rewire_contiguous(ctx, gate, il), il);
    return ggml_mul(ctx, a, up);
}
