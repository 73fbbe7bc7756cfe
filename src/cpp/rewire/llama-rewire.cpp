// llama-rewire: the C API of the override table and the context's setter.
#include "llama-rewire.h"
#include "llama-rewire-graph.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-memory.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

static const char * const REWIRE_ACT_NAMES[LLAMA_REWIRE_ACT_COUNT] = {
    /* DEFAULT     */ "default",
    /* SILU        */ "silu",
    /* GELU        */ "gelu",
    /* GELU_ERF    */ "gelu_erf",
    /* GELU_QUICK  */ "gelu_quick",
    /* RELU        */ "relu",
    /* RELU2       */ "relu2",
    /* LEAKY_RELU  */ "leaky_relu",
    /* ELU         */ "elu",
    /* TANH        */ "tanh",
    /* SIGMOID     */ "sigmoid",
    /* SOFTPLUS    */ "softplus",
    /* MISH        */ "mish",
    /* HARDSWISH   */ "hardswish",
    /* HARDSIGMOID */ "hardsigmoid",
    /* SWISH       */ "swish",
    /* IDENTITY    */ "identity",
};

const char * llama_rewire_act_name(enum llama_rewire_act_type type) {
    if ((int) type < 0 || type >= LLAMA_REWIRE_ACT_COUNT) {
        return nullptr;
    }
    return REWIRE_ACT_NAMES[type];
}

int32_t llama_rewire_act_from_name(const char * name) {
    if (name == nullptr) {
        return -1;
    }
    for (int32_t i = 0; i < LLAMA_REWIRE_ACT_COUNT; ++i) {
        if (std::strcmp(name, REWIRE_ACT_NAMES[i]) == 0) {
            return i;
        }
    }
    return -1;
}

int32_t llama_rewire_act_check(struct llama_rewire_act act) {
    if ((int) act.type < 0 || act.type >= LLAMA_REWIRE_ACT_COUNT) {
        return LLAMA_REWIRE_ERR_ACT;
    }
    if (!std::isfinite(act.threshold) || act.threshold < 0.0f ||
        (act.type == LLAMA_REWIRE_ACT_DEFAULT && act.threshold != 0.0f)) {
        return LLAMA_REWIRE_ERR_PARAM;
    }
    const float p = act.param;
    switch (act.type) {
        case LLAMA_REWIRE_ACT_EXPR:
            return llama_rewire_expr_check(act.expr, act.n_expr);
        case LLAMA_REWIRE_ACT_LEAKY_RELU:
        case LLAMA_REWIRE_ACT_SWISH:
            return std::isfinite(p) ? LLAMA_REWIRE_OK : LLAMA_REWIRE_ERR_PARAM;
        case LLAMA_REWIRE_ACT_ELU:
            return std::isfinite(p) && p >= 0.0f ? LLAMA_REWIRE_OK : LLAMA_REWIRE_ERR_PARAM;
        case LLAMA_REWIRE_ACT_SOFTPLUS:
            return std::isfinite(p) && p > 0.0f ? LLAMA_REWIRE_OK : LLAMA_REWIRE_ERR_PARAM;
        default:
            return LLAMA_REWIRE_OK;
    }
}

struct llama_rewire_layer llama_rewire_layer_identity(void) {
    llama_rewire_layer layer;
    std::memset(&layer, 0, sizeof(layer));
    for (auto & a : layer.act) {
        a.type = LLAMA_REWIRE_ACT_DEFAULT;
    }
    layer.attn_scale = 1.0f;
    layer.ffn_scale  = 1.0f;
    return layer;
}

int32_t llama_rewire_n_layer(const struct llama_context * ctx) {
    if (ctx == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    return state ? (int32_t) state->layers.size() : 0;
}

static bool rewire_act_same(const llama_rewire_act_slot & a, const llama_rewire_act_slot & b) {
    if (a.act.type != b.act.type) {
        return false;
    }
    if (a.act.type == LLAMA_REWIRE_ACT_DEFAULT) {
        return true;
    }
    if (a.act.param != b.act.param || a.act.threshold != b.act.threshold || a.expr.size() != b.expr.size()) {
        return false;
    }
    for (size_t i = 0; i < a.expr.size(); ++i) {
        if (a.expr[i].op != b.expr[i].op || a.expr[i].a != b.expr[i].a || a.expr[i].b != b.expr[i].b) {
            return false;
        }
    }
    return true;
}

static bool rewire_layer_same(const llama_rewire_layer_slot & a, const llama_rewire_layer_slot & b) {
    for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
        if (!rewire_act_same(a.act[s], b.act[s])) {
            return false;
        }
    }
    return a.skip_attn == b.skip_attn && a.skip_ffn == b.skip_ffn && a.attn_scale == b.attn_scale &&
           a.ffn_scale == b.ffn_scale && a.experts_used == b.experts_used && a.heads_off == b.heads_off &&
           a.experts_off == b.experts_off;
}

static int32_t rewire_layer_info(const llama_context & ctx, int32_t il, llama_rewire_layer_info & info);

// Check one entry against layer il and copy it into slot.
static int32_t rewire_layer_take(const llama_context & ctx, int32_t il, const llama_rewire_layer & in,
                                 llama_rewire_layer_slot & out) {
    llama_rewire_layer_info info;
    rewire_layer_info(ctx, il, info);
    for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
        const llama_rewire_act & a = in.act[s];
        const int32_t rc = llama_rewire_act_check(a);
        if (rc != LLAMA_REWIRE_OK) {
            return rc;
        }
        out.act[s].act = a;
        out.act[s].act.expr   = nullptr;
        out.act[s].act.n_expr = 0;
        out.act[s].expr.clear();
        if (a.type == LLAMA_REWIRE_ACT_EXPR) {
            out.act[s].expr.assign(a.expr, a.expr + a.n_expr);
        }
    }
    bool any_act = false;
    for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
        any_act = any_act || in.act[s].type != LLAMA_REWIRE_ACT_DEFAULT;
    }
    // an activation for a scope the layer lacks is harmless (the same activation is set on every scope by
    // llama_rewire_set), but a layer with no reachable FFN at all can't take one
    if (any_act && !info.scopes[0] && !info.scopes[1] && !info.scopes[2]) {
        return LLAMA_REWIRE_ERR_UNREACHABLE;
    }
    if (!std::isfinite(in.attn_scale) || !std::isfinite(in.ffn_scale)) {
        return LLAMA_REWIRE_ERR_KNOB;
    }
    // a post-norm the architecture builds without build_norm would undo a scale applied before it
    const llama_rewire_state::seen  & seen  = ctx.get_cparams().rewire->ffn[il];
    const llama_rewire_state::shape & shape = ctx.get_cparams().rewire->model[il];
    if ((in.attn_scale != 1.0f && shape.attn_post_norm && !seen.attn_post_seen) ||
        (in.ffn_scale  != 1.0f && shape.ffn_post_norm  && !seen.ffn_post_seen)) {
        return LLAMA_REWIRE_ERR_KNOB;
    }
    if (in.skip_attn && (!info.attn || info.kv_reused)) {
        return LLAMA_REWIRE_ERR_SKIP;
    }
    if (in.skip_ffn && !info.scopes[0] && !info.scopes[1] && !info.scopes[2]) {
        return LLAMA_REWIRE_ERR_SKIP;
    }
    if ((in.n_heads_off > 0 && (in.heads_off == nullptr || !info.attn)) || in.n_heads_off < 0 ||
        (in.n_experts_off > 0 && in.experts_off == nullptr) || in.n_experts_off < 0) {
        return LLAMA_REWIRE_ERR_KNOB;
    }
    for (int32_t i = 0; i < in.n_heads_off; ++i) {
        if (in.heads_off[i] < 0 || in.heads_off[i] >= info.n_head) {
            return LLAMA_REWIRE_ERR_KNOB;
        }
    }
    for (int32_t i = 0; i < in.n_experts_off; ++i) {
        if (in.experts_off[i] < 0 || in.experts_off[i] >= info.n_expert) {
            return LLAMA_REWIRE_ERR_KNOB;
        }
    }
    out.heads_off.assign(in.heads_off, in.heads_off + in.n_heads_off);
    out.experts_off.assign(in.experts_off, in.experts_off + in.n_experts_off);
    std::sort(out.heads_off.begin(), out.heads_off.end());
    out.heads_off.erase(std::unique(out.heads_off.begin(), out.heads_off.end()), out.heads_off.end());
    std::sort(out.experts_off.begin(), out.experts_off.end());
    out.experts_off.erase(std::unique(out.experts_off.begin(), out.experts_off.end()), out.experts_off.end());

    const int32_t n_on = info.n_expert - (int32_t) out.experts_off.size();
    const int32_t k    = in.experts_used > 0 ? in.experts_used : info.n_expert_used;
    if (in.experts_used < 0 || (in.experts_used > 0 && info.n_expert == 0) ||
        k > info.max_experts_used || k > LLAMA_MAX_EXPERTS || (info.n_expert > 0 && k > n_on)) {
        return LLAMA_REWIRE_ERR_KNOB;
    }
    out.skip_attn    = in.skip_attn;
    out.skip_ffn     = in.skip_ffn;
    out.attn_scale   = in.attn_scale;
    out.ffn_scale    = in.ffn_scale;
    out.experts_used = in.experts_used == info.n_expert_used ? 0 : in.experts_used; // the model's own k: no change
    return LLAMA_REWIRE_OK;
}

static bool rewire_layer_is_identity(const llama_rewire_layer_slot & l) {
    return rewire_layer_same(l, llama_rewire_layer_slot());
}

int32_t llama_context::rewire_set(const llama_rewire_layer * layers, int32_t n_layers, int32_t * bad_layer) {
    if (bad_layer) {
        *bad_layer = -1;
    }
    llama_rewire_state * state = cparams.rewire.get();
    if (state == nullptr || n_layers < 0 || (n_layers > 0 && layers == nullptr)) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const int32_t n_layer = (int32_t) state->layers.size();
    if (n_layers != 0 && n_layers != n_layer) {
        return LLAMA_REWIRE_ERR_ARG;
    }

    std::vector<llama_rewire_layer_slot> next(n_layer);
    bool active = false;
    for (int32_t il = 0; il < n_layers; ++il) {
        const int32_t rc = rewire_layer_take(*this, il, layers[il], next[il]);
        if (rc != LLAMA_REWIRE_OK) {
            if (bad_layer) {
                *bad_layer = il;
            }
            return rc;
        }
        active = active || !rewire_layer_is_identity(next[il]);
    }

    bool same = active == state->active;
    for (int32_t il = 0; same && il < n_layer; ++il) {
        same = rewire_layer_same(next[il], state->layers[il]);
    }
    if (same) {
        return LLAMA_REWIRE_OK;
    }

    std::vector<llama_rewire_layer_slot> prev = std::move(state->layers);
    const bool prev_active = state->active;
    state->layers = std::move(next);
    state->active = active;
    cparams.rewire_gen++;

    // keys and values computed under the old wiring are stale (and a backend may still be writing them)
    synchronize();
    if (memory) {
        memory->clear(true);
    }

    // the op structure changed: the compute buffers must fit the new worst-case graph
    if (!rewire_reserve()) {
        state->layers = std::move(prev);
        state->active = prev_active;
        cparams.rewire_gen++;
        if (!rewire_reserve()) {
            LLAMA_LOG_ERROR("%s: failed to reserve the previous graph again\n", __func__);
        }
        return LLAMA_REWIRE_ERR_RESERVE;
    }
    return LLAMA_REWIRE_OK;
}

bool llama_context::rewire_reserve() {
    try {
        if (sched_need_reserve || !sched || model.hparams.no_alloc) {
            // nothing reserved yet (or a full reserve is pending anyway): llama.cpp's own path
            sched_need_reserve = true;
            sched_reserve();
            return true;
        }
        // Only the FFN activations changed, so the scheduler, its backends and its splits' shape stay.
        // Reserving the worst-case (prompt) graph once on the existing scheduler grows the compute
        // buffers if the new graph needs more and keeps them otherwise; the full sched_reserve would
        // rebuild the scheduler, probe the fused ops and allocate every buffer afresh (several ms).
        llama_memory_context_ptr mctx;
        if (memory) {
            mctx = memory->init_full();
            if (!mctx) {
                LLAMA_LOG_ERROR("%s: failed to initialize the memory module\n", __func__);
                return false;
            }
        }
        const uint32_t n_seqs    = cparams.n_seq_max;
        const uint32_t n_tokens  = std::min(cparams.n_ctx, cparams.n_ubatch);
        const uint32_t n_outputs = std::min(n_tokens, cparams.n_outputs_max);
        return graph_reserve(n_tokens, n_seqs, n_outputs, mctx.get()) != nullptr;
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s: failed to reserve the rewired graph: %s\n", __func__, e.what());
        return false;
    }
}

int32_t llama_rewire_set(
        struct llama_context          * ctx,
        const struct llama_rewire_act * acts,
        int32_t                         n_acts,
        int32_t                       * bad_layer) {
    if (ctx == nullptr || n_acts < 0 || (n_acts > 0 && acts == nullptr)) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    std::vector<llama_rewire_layer> layers(n_acts, llama_rewire_layer_identity());
    for (int32_t il = 0; il < n_acts; ++il) {
        for (auto & a : layers[il].act) {
            a = acts[il];
        }
    }
    return ctx->rewire_set(layers.data(), n_acts, bad_layer);
}

int32_t llama_rewire_wiring_set(
        struct llama_context            * ctx,
        const struct llama_rewire_layer * layers,
        int32_t                           n_layers,
        int32_t                         * bad_layer) {
    if (ctx == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    return ctx->rewire_set(layers, n_layers, bad_layer);
}

int32_t llama_rewire_get(const struct llama_context * ctx, struct llama_rewire_act * acts, int32_t n_acts) {
    if (ctx == nullptr || acts == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    if (state == nullptr || n_acts != (int32_t) state->layers.size()) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    for (int32_t il = 0; il < n_acts; ++il) {
        const llama_rewire_act_slot & slot = state->layers[il].act[LLAMA_REWIRE_SCOPE_DENSE];
        acts[il]        = slot.act;
        acts[il].expr   = slot.expr.empty() ? nullptr : slot.expr.data();
        acts[il].n_expr = (int32_t) slot.expr.size();
    }
    return LLAMA_REWIRE_OK;
}

int32_t llama_rewire_wiring_get(const struct llama_context * ctx, int32_t il, struct llama_rewire_layer * layer) {
    if (ctx == nullptr || layer == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    if (state == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    if (il < 0 || il >= (int32_t) state->layers.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    const llama_rewire_layer_slot & s = state->layers[il];
    *layer = llama_rewire_layer_identity();
    for (int k = 0; k < LLAMA_REWIRE_SCOPE_COUNT; ++k) {
        layer->act[k]        = s.act[k].act;
        layer->act[k].expr   = s.act[k].expr.empty() ? nullptr : s.act[k].expr.data();
        layer->act[k].n_expr = (int32_t) s.act[k].expr.size();
    }
    layer->skip_attn     = s.skip_attn;
    layer->skip_ffn      = s.skip_ffn;
    layer->attn_scale    = s.attn_scale;
    layer->ffn_scale     = s.ffn_scale;
    layer->experts_used  = s.experts_used;
    layer->heads_off     = s.heads_off.empty() ? nullptr : s.heads_off.data();
    layer->n_heads_off   = (int32_t) s.heads_off.size();
    layer->experts_off   = s.experts_off.empty() ? nullptr : s.experts_off.data();
    layer->n_experts_off = (int32_t) s.experts_off.size();
    return LLAMA_REWIRE_OK;
}

static int32_t rewire_layer_info(const llama_context & ctx, int32_t il, llama_rewire_layer_info & info) {
    std::memset(&info, 0, sizeof(info));
    const llama_rewire_state * state = ctx.get_cparams().rewire.get();
    if (state == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    if (il < 0 || il >= (int32_t) state->layers.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    const llama_hparams & hp = ctx.get_model().hparams;
    const llama_rewire_state::seen  & seen  = state->ffn[il];
    const llama_rewire_state::shape & shape = state->model[il];
    info.attn      = seen.attn;
    info.n_head    = seen.n_head > 0 ? seen.n_head : (int32_t) hp.n_head(il);
    info.n_head_kv = (int32_t) hp.n_head_kv(il);
    info.recurrent = hp.is_recr(il);
    // layers from n_layer_kv_from_start on read the KV cache of the last two layers before it (gemma3n)
    const int32_t kv_from = hp.n_layer_kv_from_start;
    info.kv_reused = kv_from >= 0 && kv_from < (int32_t) hp.n_layer() && il < kv_from && il >= kv_from - 2;
    for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
        info.scopes[s] = seen.scopes[s];
    }
    info.n_expert      = seen.scopes[LLAMA_REWIRE_SCOPE_EXPERTS] ? seen.n_expert : 0;
    info.n_expert_used = info.n_expert ? seen.n_expert_used : 0;
    info.max_experts_used = info.n_expert;
    if (info.n_expert && hp.n_expert_groups > 1) {
        info.max_experts_used = (int32_t) (hp.n_group_used * (info.n_expert / hp.n_expert_groups));
    }
    info.attn_post_norm = shape.attn_post_norm;
    info.ffn_post_norm  = shape.ffn_post_norm;
    return LLAMA_REWIRE_OK;
}

int32_t llama_rewire_layer_describe(const struct llama_context * ctx, int32_t il, struct llama_rewire_layer_info * info) {
    if (ctx == nullptr || info == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    return rewire_layer_info(*ctx, il, *info);
}

static const char * rewire_op_name(int32_t op) {
    switch (op) {
        case LLM_FFN_SILU:           return "silu";
        case LLM_FFN_GELU:           return "gelu";
        case LLM_FFN_RELU:           return "relu";
        case LLM_FFN_RELU_SQR:       return "relu2";
        case LLM_FFN_SWIGLU:         return "silu";
        case LLM_FFN_GEGLU:          return "gelu";
        case LLM_FFN_REGLU:          return "relu";
        case LLM_FFN_SWIGLU_OAI_MOE: return "swiglu_oai";
        case LLM_FFN_SITU:           return "situ";
        default:                     return "unknown";
    }
}

int32_t llama_rewire_ffn_describe(const struct llama_context * ctx, int32_t il, struct llama_rewire_ffn_info * info) {
    if (ctx == nullptr || info == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    if (state == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    if (il < 0 || il >= (int32_t) state->ffn.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    const llama_rewire_state::seen & s = state->ffn[il];
    info->act     = s.kinds ? rewire_op_name(s.op) : nullptr;
    info->gated   = s.gated;
    info->fused   = s.fused;
    info->clamped = s.clamped;
    info->kinds   = s.kinds;
    return LLAMA_REWIRE_OK;
}
