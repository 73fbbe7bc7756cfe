// llama-rewire: the internal side of the hooks, used by the call sites that patches/ add to llama.cpp.
#pragma once

#include "llama-rewire.h"

#include "llama-graph.h"

#include <cstdint>
#include <memory>
#include <vector>

struct ggml_context;
struct ggml_tensor;
struct llama_hparams;
struct llama_cparams;
struct llama_model;

// One activation as stored: the entry plus its own copy of an expression program.
struct llama_rewire_act_slot {
    llama_rewire_act             act  = {LLAMA_REWIRE_ACT_DEFAULT, 0.0f, 0.0f, nullptr, 0};
    std::vector<llama_rewire_op> expr;
};

// One layer's wiring as stored (llama_rewire_layer with owned arrays).
struct llama_rewire_layer_slot {
    llama_rewire_act_slot act[LLAMA_REWIRE_SCOPE_COUNT];
    bool                  skip_attn    = false;
    bool                  skip_ffn     = false;
    float                 attn_scale   = 1.0f;
    float                 ffn_scale    = 1.0f;
    int32_t               experts_used = 0;
    std::vector<int32_t>  heads_off;
    std::vector<int32_t>  experts_off;
};

// One point's edits and tap (llama_rewire_edit, llama_rewire_taps_set), with owned arrays.
struct llama_rewire_place {
    bool                 tapped    = false;
    bool                 patch     = false;
    std::vector<int32_t> patch_pos;       // [n]
    std::vector<float>   patch_values;    // [n][width]
    int32_t              ablate_n  = 0;   // directions
    std::vector<float>   ablate_dirs;     // [ablate_n][width]
    int32_t              ablate_begin = 0, ablate_end = -1;
    bool                 add       = false;
    std::vector<float>   add_values;      // [width]
    int32_t              add_begin = 0, add_end = -1;

    bool edited() const { return patch || ablate_n > 0 || add; }
};

// The tensors tapped in one graph, and the positions of the ubatch it last computed.
struct llama_rewire_tap_rec {
    int32_t             point;
    int32_t             il;
    const ggml_tensor * t;
};

// Per-context state, owned through llama_cparams::rewire (a shared_ptr, so that the copies of cparams
// that graphs keep stay valid). llama_cparams::rewire_gen is bumped with every change of the wiring and
// takes part in llm_graph_params::allow_reuse, so a graph built under another wiring is never reused.
struct llama_rewire_state {
    std::vector<llama_rewire_layer_slot> layers; // [n_layer] the wiring

    // What the model holds, from its tensors (filled at context creation).
    struct shape {
        bool                attn_post_norm = false;
        bool                ffn_post_norm  = false;
        bool                moe            = false; // routed experts: build_ffn in this layer is a shared expert
        bool                shexp          = false; // routed experts plus a shared expert
        int32_t             n_ff           = 0;     // the dense FFN's width (hparams.n_ff(il))
        const ggml_tensor * attn_post_w    = nullptr; // the post-norm weights, recognised in build_norm
        const ggml_tensor * ffn_post_w     = nullptr;
    };
    std::vector<shape> model; // [n_layer]

    // What the graph builder saw, recorded while building.
    struct seen {
        int32_t kinds    = 0;             // llama_rewire_ffn_kind bits
        int32_t op       = LLM_FFN_NONE;  // llm_ffn_op_type of the last FFN built in the layer
        bool    gated    = false;
        bool    fused    = false;
        bool    clamped  = false;
        bool    scopes[LLAMA_REWIRE_SCOPE_COUNT] = {false, false, false};
        bool    attn     = false;         // build_attn ran for this layer
        int32_t n_head   = 0;             // query heads seen by build_attn_mha
        int32_t n_expert = 0;             // routed experts seen by build_moe_ffn
        int32_t n_expert_used = 0;        // their top-k
        bool    attn_post_seen = false;   // build_norm built the layer's post-norm (where a scale goes)
        bool    ffn_post_seen  = false;
    };
    std::vector<seen> ffn;               // [n_layer]

    bool active = false;                 // any layer differs from the identity

    // The residual stream: [n_layer][LLAMA_REWIRE_POINT_COUNT] edits and taps.
    std::vector<llama_rewire_place> resid;
    bool resid_active = false;           // any place is edited or tapped

    // What the last graph computed tapped: set by its registry (an input of the graph) right before it
    // computes, cleared when that graph is freed.
    const void *                      tap_owner = nullptr;
    std::vector<llama_rewire_tap_rec> tap_last;
    std::vector<int32_t>              tap_pos;   // the positions of that ubatch's tokens

    // The last layer's rows: llama.cpp keeps only the rows that have outputs from inside the last layer
    // (out_ids). When that layer is tapped, the rows are picked after it instead (the taps see every
    // token), where the graph of the architecture allows it: checked once on a graph built as upstream
    // builds it (every use of out_ids selects rows of what the last layer's build_cvec gets).
    const ggml_tensor * out_ids_built   = nullptr; // the out_ids of the graph being built
    const ggml_tensor * cvec_last       = nullptr; // what build_cvec got for the last layer in it
    bool                out_ids_checked = false;
    bool                out_ids_late_ok = false;   // rows can be picked after the last layer
    bool                out_ids_late    = false;   // this graph picks them there
    bool                out_ids_own     = false;   // the hook is building the real out_ids

    llama_rewire_place & place(int il, int point) { return resid[(size_t) il * LLAMA_REWIRE_POINT_COUNT + point]; }
};

std::shared_ptr<llama_rewire_state> llama_rewire_state_init(const llama_model & model);

// Graph nodes the wiring can add, at most, to one model graph (added to graph_max_nodes).
uint32_t llama_rewire_max_extra_nodes(uint32_t n_layer);

// The layer's wiring, or nullptr when the context has none or il is out of range.
const llama_rewire_layer_slot * llama_rewire_layer_of(const llama_cparams & cparams, int il);

// Checks of one entry against the state (shared by the setter and llama_rewire_act_check).
int32_t llama_rewire_expr_check(const llama_rewire_op * expr, int32_t n_expr);

// act(x) for an expression program (llama-rewire-expr.cpp); x is contiguous.
ggml_tensor * llama_rewire_build_expr(ggml_context * ctx, const std::vector<llama_rewire_op> & expr, ggml_tensor * x, int il);

// Called by build_ffn (kind = LLAMA_REWIRE_FFN_DENSE) and build_moe_ffn (kind = LLAMA_REWIRE_FFN_MOE)
// just before their activation switch. Records what the layer uses, then returns nullptr when layer il
// has no override for this scope (the caller builds its own activation), or the activated tensor:
//   up != nullptr:                          act(gate) * up
//   up == nullptr, type_op a fused GLU op:  act(gate[:n/2]) * gate[n/2:]
//   otherwise:                              act(gate)
ggml_tensor * llama_rewire_build_ffn_act(
        ggml_context        * ctx,
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        int                   il,
        llm_ffn_op_type       type_op,
        llama_rewire_ffn_kind kind,
        ggml_tensor         * gate,
        ggml_tensor         * up);

// Sublayer hooks (llama-rewire-sublayer.cpp), called by llm_graph_context's builders.
//
// At the entry of build_attn: zeros shaped like its output [n_out, n_tokens] when the layer's attention is skipped (the
// caller returns them at once), else nullptr. Records that the layer has attention.
ggml_tensor * llama_rewire_attn_skip(const llm_graph_context & gctx, int il, const ggml_tensor * wo,
        const ggml_tensor * q_cur, const ggml_tensor * k_cur, const ggml_tensor * v_cur, const ggml_tensor * v_mla);

// At the entry of build_ffn / build_moe_ffn: zeros shaped like the FFN's output when the layer's FFN is
// skipped, else nullptr.
ggml_tensor * llama_rewire_ffn_skip(const llm_graph_context & gctx, int il, int64_t n_out, ggml_tensor * inp);

// At the exit of build_attn / build_ffn / build_moe_ffn: out scaled by the layer's scale when the layer
// has no post-norm for that sublayer, else out as it is.
ggml_tensor * llama_rewire_attn_out(const llm_graph_context & gctx, int il, ggml_tensor * out);
ggml_tensor * llama_rewire_ffn_out (const llm_graph_context & gctx, int il, ggml_tensor * out);

// At the exit of build_norm: a layer's post-norm (recognised by its weight mw) scaled by the layer's scale.
ggml_tensor * llama_rewire_norm_out(const llm_graph_context & gctx, int il, const ggml_tensor * mw, ggml_tensor * out);

// At the exit of build_attn_mha: kqv [n_embd_head_v * n_head, n_tokens] (contiguous) with the layer's
// heads_off zeroed. Records the layer's head count.
ggml_tensor * llama_rewire_attn_heads(const llm_graph_context & gctx, int il, int64_t n_head, ggml_tensor * kqv);

// At the end of llama_model::build_graph: when the wiring skips sublayers, the graph inputs that only the
// skipped attention read (positions, masks, KV indices of a layer kind no one runs any more) are no
// longer reached from the output; they are added to the graph as leaves so that they get a buffer, since
// every input is set before each decode.
void llama_rewire_graph_done(const llm_graph_context & gctx);

// Residual-stream hooks (llama-rewire-resid.cpp). t is the point's value as the graph has it; the result
// (t edited, and marked as an output when tapped) replaces it. Called by build_cvec (RESID_POST), the
// attention and FFN exits or their post-norms (ATTN_OUT, FFN_OUT: see llama_rewire_attn_out) and build_ffn
// before ffn_down (FFN_ACT).
ggml_tensor * llama_rewire_resid_point(const llm_graph_context & gctx, int il, llama_rewire_point point, ggml_tensor * t);

// At the start of build_inp_out_ids: nullptr (build upstream's out_ids), or, when the last layer's rows are
// picked after it, indices of every row (the architecture's own selection keeps them all).
ggml_tensor * llama_rewire_out_ids(const llm_graph_context & gctx);

// At the end of build_inp_out_ids: records the out_ids built.
void llama_rewire_out_ids_built(const llm_graph_context & gctx, ggml_tensor * out_ids);

// At the end of llama_model::build_graph (from llama_rewire_graph_done): checks, once, whether the last
// layer's rows can be picked after it, and forgets the graph's records.
void llama_rewire_resid_graph_done(const llm_graph_context & gctx);

// MoE hooks (llama-rewire-moe.cpp), called by build_moe_ffn.
//
// The top-k to use: the layer's experts_used, or k as given. Records the layer's experts. A layer whose
// experts are chosen by the architecture without the router (fixed = true: deepseek4's hash routing) takes
// neither experts_used nor experts_off: it is recorded without routed experts to choose from.
int64_t llama_rewire_moe_k(const llama_cparams & cparams, int il, int64_t n_expert, int64_t k, bool fixed);

// logits [n_expert, n_tokens] with -inf added for the layer's experts_off (or logits as they are).
ggml_tensor * llama_rewire_moe_mask(const llm_graph_context & gctx, int il, ggml_tensor * logits);
