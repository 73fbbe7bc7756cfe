// llama-rewire: sublayer knobs: skips, output scales, head ablation.
#include "llama-rewire-graph.h"

#include <cmath>

#include "llama-cparams.h"
#include "llama-rewire-input.h"

#include "ggml.h"
#include "ggml-backend.h"

// Zeros of shape [n0, n1, n2, n3], as a graph input (no node of the skipped sublayer is needed for it).
// One tensor of each shape serves every skipped sublayer of a graph: it is only ever read.
static ggml_tensor * rewire_zeros(const llm_graph_context & gctx, const int64_t ne[4], const char * what, int il) {
    for (const llm_graph_input_ptr & input : gctx.res->inputs) {
        const auto * zeros = dynamic_cast<const llama_rewire_input *>(input.get());
        if (zeros != nullptr && zeros->values.empty() && zeros->t->ne[0] == ne[0] && zeros->t->ne[1] == ne[1] &&
            zeros->t->ne[2] == ne[2] && zeros->t->ne[3] == ne[3]) {
            return zeros->t;
        }
    }
    ggml_tensor * t = ggml_new_tensor_4d(gctx.ctx0, GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3]);
    ggml_set_input(t);
    ggml_format_name(t, "rewire_%s_skipped-%d", what, il); // named after the first sublayer that uses it
    gctx.res->add_input(std::make_unique<llama_rewire_input>(t, std::vector<float>()));
    return t;
}

ggml_tensor * llama_rewire_attn_skip(const llm_graph_context & gctx, int il, const ggml_tensor * wo,
        const ggml_tensor * q_cur, const ggml_tensor * k_cur, const ggml_tensor * v_cur, const ggml_tensor * v_mla) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->layers.size()) {
        return nullptr;
    }
    state->ffn[il].attn = true;
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer == nullptr || !layer->skip_attn) {
        return nullptr;
    }
    // q [head_dim, n_head, n_tokens]; the output is wo's, or the heads' values side by side
    const int64_t n_head   = q_cur->ne[1];
    const int64_t n_tokens = q_cur->ne[2] * q_cur->ne[3];
    const int64_t head_v   = v_mla ? v_mla->ne[1] : v_cur ? v_cur->ne[0] : k_cur->ne[0];
    const int64_t ne[4]    = {wo ? wo->ne[1] : head_v * n_head, n_tokens, 1, 1};
    return rewire_zeros(gctx, ne, "attn", il);
}

ggml_tensor * llama_rewire_ffn_skip(const llm_graph_context & gctx, int il, int64_t n_out, ggml_tensor * inp) {
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer == nullptr || !layer->skip_ffn) {
        return nullptr;
    }
    const int64_t ne[4] = {n_out, inp->ne[1], inp->ne[2], inp->ne[3]};
    return rewire_zeros(gctx, ne, "ffn", il);
}

static ggml_tensor * rewire_scaled(const llm_graph_context & gctx, ggml_tensor * out, float s, const char * what, int il) {
    if (s == 1.0f) {
        return out;
    }
    ggml_tensor * t = ggml_scale(gctx.ctx0, out, s);
    ggml_format_name(t, "rewire_%s_scaled-%d", what, il);
    return t;
}

ggml_tensor * llama_rewire_attn_out(const llm_graph_context & gctx, int il, ggml_tensor * out) {
    const llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->model.size() || state->model[il].attn_post_norm) {
        return out; // a post-norm follows: the scale and the point are after it (llama_rewire_norm_out)
    }
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer != nullptr) {
        out = rewire_scaled(gctx, out, layer->attn_scale, "attn", il);
    }
    return llama_rewire_resid_point(gctx, il, LLAMA_REWIRE_POINT_ATTN_OUT, out);
}

ggml_tensor * llama_rewire_ffn_out(const llm_graph_context & gctx, int il, ggml_tensor * out) {
    const llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->model.size() || state->model[il].ffn_post_norm) {
        return out;
    }
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer != nullptr) {
        out = rewire_scaled(gctx, out, layer->ffn_scale, "ffn", il);
    }
    // a layer that adds a shared expert to routed experts has no one FFN_OUT tensor: its point is never
    // tapped or edited (llama_rewire_point_width is 0 there)
    return llama_rewire_resid_point(gctx, il, LLAMA_REWIRE_POINT_FFN_OUT, out);
}

ggml_tensor * llama_rewire_norm_out(const llm_graph_context & gctx, int il, const ggml_tensor * mw, ggml_tensor * out) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || mw == nullptr) {
        return out;
    }
    // some architectures build a post-norm without its layer index (gemma3's ffn_post_norm has il = -1):
    // the weight tells the layer
    const int n_layer = (int) state->model.size();
    for (int k = 0; k < n_layer; ++k) {
        const int i = il >= 0 && il < n_layer ? (il + k) % n_layer : k;
        const llama_rewire_state::shape & shape = state->model[i];
        if (mw == shape.attn_post_w) {
            state->ffn[i].attn_post_seen = true;
            if (!state->active) {
                return llama_rewire_resid_point(gctx, i, LLAMA_REWIRE_POINT_ATTN_OUT, out);
            }
            out = rewire_scaled(gctx, out, state->layers[i].attn_scale, "attn", i);
            // a skipped sublayer has no output to read or edit (as where no post-norm follows it)
            return state->layers[i].skip_attn ? out : llama_rewire_resid_point(gctx, i, LLAMA_REWIRE_POINT_ATTN_OUT, out);
        }
        if (mw == shape.ffn_post_w) {
            state->ffn[i].ffn_post_seen = true;
            if (!state->active) {
                return llama_rewire_resid_point(gctx, i, LLAMA_REWIRE_POINT_FFN_OUT, out);
            }
            out = rewire_scaled(gctx, out, state->layers[i].ffn_scale, "ffn", i);
            return state->layers[i].skip_ffn ? out : llama_rewire_resid_point(gctx, i, LLAMA_REWIRE_POINT_FFN_OUT, out);
        }
    }
    return out;
}

ggml_tensor * llama_rewire_attn_heads(const llm_graph_context & gctx, int il, int64_t n_head, ggml_tensor * kqv) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || il < 0 || (size_t) il >= state->layers.size()) {
        return kqv;
    }
    state->ffn[il].n_head = (int32_t) n_head;
    const llama_rewire_layer_slot * layer = llama_rewire_layer_of(gctx.cparams, il);
    if (layer == nullptr || layer->heads_off.empty() || n_head <= 0 || kqv->ne[0] % n_head != 0) {
        return kqv;
    }
    // kqv [head_dim * n_head, n_tokens] -> [head_dim, n_head, n_tokens] * mask [1, n_head, 1]
    std::vector<float> mask(n_head, 1.0f);
    for (int32_t h : layer->heads_off) {
        if (h >= 0 && h < n_head) {
            mask[h] = 0.0f;
        }
    }
    ggml_tensor * m = ggml_new_tensor_3d(gctx.ctx0, GGML_TYPE_F32, 1, n_head, 1);
    ggml_set_input(m);
    ggml_format_name(m, "rewire_heads_mask-%d", il);
    gctx.res->add_input(std::make_unique<llama_rewire_input>(m, std::move(mask)));

    const int64_t n_tokens = ggml_nelements(kqv) / kqv->ne[0];
    ggml_tensor * cur = ggml_reshape_3d(gctx.ctx0, kqv, kqv->ne[0] / n_head, n_head, n_tokens);
    cur = ggml_mul(gctx.ctx0, cur, m);
    ggml_format_name(cur, "rewire_heads_off-%d", il);
    return ggml_reshape(gctx.ctx0, cur, kqv);
}

void llama_rewire_graph_done(const llm_graph_context & gctx) {
    llama_rewire_resid_graph_done(gctx);
    const llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || !state->active || gctx.gf == nullptr) {
        return;
    }
    bool skips = false;
    for (const llama_rewire_layer_slot & l : state->layers) {
        skips = skips || l.skip_attn || l.skip_ffn;
    }
    if (!skips) {
        return;
    }
    // expanding a tensor that is already in the graph is a no-op
    for (ggml_tensor * t = ggml_get_first_tensor(gctx.ctx0); t != nullptr; t = ggml_get_next_tensor(gctx.ctx0, t)) {
        if ((t->flags & GGML_TENSOR_FLAG_INPUT) && t->op == GGML_OP_NONE) {
            ggml_build_forward_expand(gctx.gf, t);
        }
    }
}
