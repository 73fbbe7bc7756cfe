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

int32_t llama_rewire_n_layer(const struct llama_context * ctx) {
    if (ctx == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    return state ? (int32_t) state->acts.size() : 0;
}

static bool rewire_same(const std::vector<llama_rewire_act> & a, const std::vector<llama_rewire_act> & b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].type != b[i].type) {
            return false;
        }
        // the parameter only matters for the activations that take one
        if (a[i].type != LLAMA_REWIRE_ACT_DEFAULT &&
            (a[i].param != b[i].param || a[i].threshold != b[i].threshold)) {
            return false;
        }
    }
    return true;
}

int32_t llama_context::rewire_set(const llama_rewire_act * acts, int32_t n_acts, int32_t * bad_layer) {
    if (bad_layer) {
        *bad_layer = -1;
    }
    llama_rewire_state * state = cparams.rewire.get();
    if (state == nullptr || n_acts < 0 || (n_acts > 0 && acts == nullptr)) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const int32_t n_layer = (int32_t) state->acts.size();
    if (n_acts != 0 && n_acts != n_layer) {
        return LLAMA_REWIRE_ERR_ARG;
    }

    std::vector<llama_rewire_act> next(n_layer, llama_rewire_act{LLAMA_REWIRE_ACT_DEFAULT, 0.0f, 0.0f});
    for (int32_t il = 0; il < n_acts; ++il) {
        const int32_t rc = llama_rewire_act_check(acts[il]);
        if (rc != LLAMA_REWIRE_OK) {
            if (bad_layer) {
                *bad_layer = il;
            }
            return rc;
        }
        if (acts[il].type != LLAMA_REWIRE_ACT_DEFAULT && state->ffn[il].kinds == 0) {
            if (bad_layer) {
                *bad_layer = il;
            }
            return LLAMA_REWIRE_ERR_UNREACHABLE;
        }
        next[il] = acts[il];
    }

    if (rewire_same(next, state->acts)) {
        return LLAMA_REWIRE_OK;
    }

    std::vector<llama_rewire_act> prev = state->acts;
    state->acts = std::move(next);
    cparams.rewire_gen++;

    // keys and values computed under the old wiring are stale (and a backend may still be writing them)
    synchronize();
    if (memory) {
        memory->clear(true);
    }

    // the op structure changed: the compute buffers must fit the new worst-case graph
    if (!rewire_reserve()) {
        state->acts = std::move(prev);
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
    if (ctx == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    return ctx->rewire_set(acts, n_acts, bad_layer);
}

int32_t llama_rewire_get(const struct llama_context * ctx, struct llama_rewire_act * acts, int32_t n_acts) {
    if (ctx == nullptr || acts == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const llama_rewire_state * state = ctx->get_cparams().rewire.get();
    if (state == nullptr || n_acts != (int32_t) state->acts.size()) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    for (int32_t il = 0; il < n_acts; ++il) {
        acts[il] = state->acts[il];
    }
    return LLAMA_REWIRE_OK;
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
