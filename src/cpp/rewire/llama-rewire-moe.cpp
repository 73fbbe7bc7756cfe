// llama-rewire: MoE routing knobs: experts per token and experts switched off.
#include "llama-rewire-graph.h"

#include <cmath>

#include "llama-cparams.h"
#include "llama-rewire-input.h"

#include "ggml.h"

int64_t llama_rewire_moe_k(const llama_cparams & cparams, int il, int64_t n_expert, int64_t k, bool fixed) {
    llama_rewire_state * state = cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->layers.size()) {
        return k;
    }
    llama_rewire_state::seen & s = state->ffn[il];
    if (fixed) {
        s.n_expert      = 0;
        s.n_expert_used = 0;
        return k;
    }
    s.n_expert = (int32_t) n_expert;
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(cparams, il);
    if (layer == nullptr || layer->experts_used <= 0) {
        s.n_expert_used = (int32_t) k;
        return k;
    }
    return layer->experts_used;
}

ggml_tensor * llama_rewire_moe_mask(const llm_graph_context & gctx, int il, ggml_tensor * logits) {
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer == nullptr || layer->experts_off.empty()) {
        return logits;
    }
    // [n_expert, 1]: 0 for the experts left on, -inf for those switched off; broadcast over the tokens
    const int64_t n_expert = logits->ne[0];
    std::vector<float> mask(n_expert, 0.0f);
    for (int32_t e : layer->experts_off) {
        if (e >= 0 && e < n_expert) {
            mask[e] = -INFINITY;
        }
    }
    ggml_tensor * m = ggml_new_tensor_2d(gctx.ctx0, GGML_TYPE_F32, n_expert, 1);
    ggml_set_input(m);
    ggml_format_name(m, "rewire_experts_mask-%d", il);
    gctx.res->add_input(std::make_unique<llama_rewire_input>(m, std::move(mask)));

    ggml_tensor * out = ggml_add(gctx.ctx0, logits, m);
    ggml_format_name(out, "rewire_experts_off-%d", il);
    return out;
}
