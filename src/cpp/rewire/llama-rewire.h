// llama-rewire: per-layer rewiring of llama.cpp's graphs: FFN activations, skips, scales, heads, MoE routing.
//
// This header is included at the end of llama.h (patches/0001). It is the contract of the hooks: each
// llama_context holds a wiring with one entry per layer (llama_rewire_layer, set with
// llama_rewire_wiring_set; llama_rewire_set is the activation-only form). An activation other than
// LLAMA_REWIRE_ACT_DEFAULT replaces the activation of that layer's feed-forward networks of its scope
// (dense FFN, shared experts, routed experts) the next time a graph is built:
//
//   gated FFN:  down(act(gate(x)) * up(x))      the override replaces the gate activation
//   plain FFN:  down(act(up(x)))                the override replaces the one activation
//   fused GLU:  one gate_up tensor is split in halves, act(first half) * second half
//
// An overridden activation is a graph node named "ffn_rewire_act-<layer>" unless it runs as a fused GLU
// kernel (silu, gelu, gelu_erf, gelu_quick, relu without threshold): observers (cb_eval) can read it.
// A thresholded one is also available before thresholding, as "ffn_rewire_raw-<layer>".
//
// The other knobs' nodes are named too: "rewire_attn_skipped-<layer>" / "rewire_ffn_skipped-<layer>"
// (the zeros a skipped sublayer adds, one input of each shape per graph, named after its first layer), "rewire_attn_scaled-<layer>" / "rewire_ffn_scaled-<layer>",
// "rewire_heads_off-<layer>", "rewire_experts_off-<layer>" (the masked router logits), and the steps of
// an expression activation "ffn_rewire_expr<step>-<layer>".
//
// The weights are never touched.

#ifndef LLAMA_REWIRE_H
#define LLAMA_REWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

    // Activations. f(x) is applied elementwise; p is llama_rewire_act::param.
    enum llama_rewire_act_type {
        LLAMA_REWIRE_ACT_DEFAULT     = 0,  // the architecture's own activation (no override)
        LLAMA_REWIRE_ACT_SILU        = 1,  // x * sigmoid(x)
        LLAMA_REWIRE_ACT_GELU        = 2,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        LLAMA_REWIRE_ACT_GELU_ERF    = 3,  // 0.5 x (1 + erf(x / sqrt(2)))
        LLAMA_REWIRE_ACT_GELU_QUICK  = 4,  // x * sigmoid(1.702 x)
        LLAMA_REWIRE_ACT_RELU        = 5,  // max(x, 0)
        LLAMA_REWIRE_ACT_RELU2       = 6,  // max(x, 0)^2
        LLAMA_REWIRE_ACT_LEAKY_RELU  = 7,  // x > 0 ? x : p x               (p: slope, finite)
        LLAMA_REWIRE_ACT_ELU         = 8,  // x > 0 ? x : p (exp(x) - 1)    (p: alpha, finite, >= 0)
        LLAMA_REWIRE_ACT_TANH        = 9,  // tanh(x)
        LLAMA_REWIRE_ACT_SIGMOID     = 10, // 1 / (1 + exp(-x))
        LLAMA_REWIRE_ACT_SOFTPLUS    = 11, // log(1 + exp(p x)) / p         (p: beta > 0; x where p x > 20)
        LLAMA_REWIRE_ACT_MISH        = 12, // x * tanh(softplus(x))
        LLAMA_REWIRE_ACT_HARDSWISH   = 13, // x * min(1, max(0, (x + 3) / 6))
        LLAMA_REWIRE_ACT_HARDSIGMOID = 14, // min(1, max(0, (x + 3) / 6))
        LLAMA_REWIRE_ACT_SWISH       = 15, // x * sigmoid(p x)              (p: beta, finite)
        LLAMA_REWIRE_ACT_IDENTITY    = 16, // x
        LLAMA_REWIRE_ACT_EXPR        = 17, // an expression program (llama_rewire_act::expr)
        LLAMA_REWIRE_ACT_COUNT,
    };

    // Expression activations: a postfix program for a stack machine whose only input is x. Each op pops
    // its operands and pushes its result; the program must leave exactly one value, which depends on x.
    // a and b are the op's constants (unused ones 0). Binary ops take two stack values (tensors):
    // constants are folded into affine / rdiv / clamp by whoever writes the program.
    enum llama_rewire_op_type {
        LLAMA_REWIRE_OP_X        = 0,  // push x
        LLAMA_REWIRE_OP_DUP      = 1,  // push a copy of the top
        LLAMA_REWIRE_OP_AFFINE   = 2,  // t -> a t + b
        LLAMA_REWIRE_OP_ADD      = 3,  // l, r -> l + r
        LLAMA_REWIRE_OP_SUB      = 4,  // l, r -> l - r
        LLAMA_REWIRE_OP_MUL      = 5,  // l, r -> l * r
        LLAMA_REWIRE_OP_DIV      = 6,  // l, r -> l / r
        LLAMA_REWIRE_OP_RDIV     = 7,  // t -> a / t
        LLAMA_REWIRE_OP_MAX      = 8,  // l, r -> max(l, r)
        LLAMA_REWIRE_OP_MIN      = 9,  // l, r -> min(l, r)
        LLAMA_REWIRE_OP_CLAMP    = 10, // t -> min(max(t, a), b)   (a may be -inf, b +inf; a <= b)
        LLAMA_REWIRE_OP_SQR      = 11, // t^2
        LLAMA_REWIRE_OP_SQRT     = 12,
        LLAMA_REWIRE_OP_EXP      = 13,
        LLAMA_REWIRE_OP_LOG      = 14,
        LLAMA_REWIRE_OP_ABS      = 15,
        LLAMA_REWIRE_OP_NEG      = 16,
        LLAMA_REWIRE_OP_TANH     = 17,
        LLAMA_REWIRE_OP_SIGMOID  = 18,
        LLAMA_REWIRE_OP_RELU     = 19,
        LLAMA_REWIRE_OP_GELU     = 20, // the tanh approximation, as LLAMA_REWIRE_ACT_GELU
        LLAMA_REWIRE_OP_SILU     = 21,
        LLAMA_REWIRE_OP_SOFTPLUS = 22, // log(1 + e^t)
        LLAMA_REWIRE_OP_SIN      = 23,
        LLAMA_REWIRE_OP_COS      = 24,
        LLAMA_REWIRE_OP_STEP     = 25, // t > 0 ? 1 : 0
        LLAMA_REWIRE_OP_COUNT,
    };

    // Limits of one program: graph nodes it adds (x and dup add none, rdiv 2, max and min 3, every
    // other op 1), stack depth, and length.
    #define LLAMA_REWIRE_EXPR_MAX_NODES 24
    #define LLAMA_REWIRE_EXPR_MAX_STACK 8
    #define LLAMA_REWIRE_EXPR_MAX_OPS   48

    struct llama_rewire_op {
        enum llama_rewire_op_type op;
        float                     a;
        float                     b;
    };

    // One table entry. With threshold t > 0 the activation is sparsified: a = act(x) is kept where
    // |a| > t and set to 0 elsewhere (CATS-style thresholding; t finite, >= 0; not with DEFAULT).
    struct llama_rewire_act {
        enum llama_rewire_act_type     type;
        float                          param;     // ignored by activations without a parameter
        float                          threshold; // 0: no thresholding
        const struct llama_rewire_op * expr;      // LLAMA_REWIRE_ACT_EXPR only: the program (copied)
        int32_t                        n_expr;
    };

    // The scopes of a layer's FFN activation: a dense FFN (build_ffn in a layer without routed experts),
    // the shared expert(s) of an MoE layer (build_ffn in a layer with routed experts), the routed experts
    // (build_moe_ffn).
    enum llama_rewire_scope {
        LLAMA_REWIRE_SCOPE_DENSE   = 0,
        LLAMA_REWIRE_SCOPE_SHARED  = 1,
        LLAMA_REWIRE_SCOPE_EXPERTS = 2,
        LLAMA_REWIRE_SCOPE_COUNT,
    };

    // The wiring of one layer. llama_rewire_layer_identity() gives the entry that changes nothing.
    //   skip_attn / skip_ffn  the sublayer adds nothing to the residual stream: build_attn (build_ffn,
    //                         build_moe_ffn) returns zeros before any of its nodes (the QKV projections
    //                         feed nothing and drop out of the graph; no K/V is stored for the layer)
    //   attn_scale / ffn_scale  the sublayer's contribution is multiplied by s: after the layer's post-norm
    //                         (attn_post_norm / ffn_post_norm) where it has one, else on build_attn's
    //                         (build_ffn's, build_moe_ffn's) output; finite; 1 adds no node; refused
    //                         (LLAMA_REWIRE_ERR_KNOB) where the architecture builds its post-norm
    //                         without build_norm, since the norm would undo it
    //   heads_off             those query heads' attention outputs are zero before the output projection
    //   experts_used          routed experts per token (top-k), 0: the model's own; the weights are
    //                         normalised as the architecture does over the k chosen
    //   experts_off           those experts' router logits are -inf before the gating function, and they
    //                         are never selected
    struct llama_rewire_layer {
        struct llama_rewire_act act[LLAMA_REWIRE_SCOPE_COUNT];
        bool                    skip_attn;
        bool                    skip_ffn;
        float                   attn_scale;
        float                   ffn_scale;
        int32_t                 experts_used;
        const int32_t         * heads_off;     // n_heads_off head indices (copied)
        int32_t                 n_heads_off;
        const int32_t         * experts_off;   // n_experts_off expert indices (copied)
        int32_t                 n_experts_off;
    };

    // What a layer offers to the wiring, as the graph builder of this context sees it.
    struct llama_rewire_layer_info {
        bool    attn;             // attention that build_attn builds (false: recurrent or no attention)
        int32_t n_head;           // query heads (heads_off range)
        int32_t n_head_kv;
        bool    recurrent;        // a recurrent (SSM / RWKV) layer
        bool    kv_reused;        // later layers read this layer's KV cache: its attention can't be skipped
        bool    scopes[LLAMA_REWIRE_SCOPE_COUNT]; // FFN scopes present
        int32_t n_expert;         // routed experts (0: none)
        int32_t n_expert_used;    // the model's own top-k
        int32_t max_experts_used; // the largest top-k the router can take (expert groups limit it)
        bool    attn_post_norm;   // a post-norm follows the attention (scales apply after it)
        bool    ffn_post_norm;
    };

    // Return codes of the functions below.
    enum llama_rewire_status {
        LLAMA_REWIRE_OK               =  0,
        LLAMA_REWIRE_ERR_ARG          = -1, // null pointer, or n_acts is neither 0 nor the layer count
        LLAMA_REWIRE_ERR_LAYER        = -2, // layer index out of range
        LLAMA_REWIRE_ERR_ACT          = -3, // unknown activation type
        LLAMA_REWIRE_ERR_PARAM        = -4, // NaN, infinite or out-of-range parameter or threshold
        LLAMA_REWIRE_ERR_UNREACHABLE  = -5, // the layer has no FFN that the hook can reach (e.g. rwkv)
        LLAMA_REWIRE_ERR_RESERVE      = -6, // the new graph could not be reserved; the old table is kept
        LLAMA_REWIRE_ERR_EXPR         = -7, // an expression program is malformed or over its limits
        LLAMA_REWIRE_ERR_KNOB         = -8, // a scale that is not finite, a head or expert out of range, a
                                            // top-k out of range or above the experts left on
        LLAMA_REWIRE_ERR_SKIP         = -9, // a skip the layer can't honour (no such sublayer, reused KV)
        LLAMA_REWIRE_ERR_POINT        = -10,// a residual-stream point the layer does not have, or not tapped
        LLAMA_REWIRE_ERR_EDIT         = -11,// an edit with a bad kind, width, count, position or value
    };

    // Kinds of FFN found in a layer (bit mask of llama_rewire_ffn_info::kinds).
    enum llama_rewire_ffn_kind {
        LLAMA_REWIRE_FFN_DENSE = 1, // a dense FFN (build_ffn), or the shared expert of an MoE layer
        LLAMA_REWIRE_FFN_MOE   = 2, // routed experts (build_moe_ffn)
    };

    // The activation of one layer as the graph builder of this context sees it.
    struct llama_rewire_ffn_info {
        const char * act;    // the architecture's activation: "silu", "gelu", "relu", "relu2", "swiglu_oai",
                             // "situ", ... (static string); NULL when the layer has no reachable FFN
        bool         gated;  // act(gate) * up, rather than act(up)
        bool         fused;  // gate and up are the two halves of one tensor (e.g. phi3's ffn_up)
        bool         clamped;// the architecture clamps its SwiGLU (swiglu_clamp_*); an override drops it
        int32_t      kinds;  // bit mask of llama_rewire_ffn_kind; 0 when the layer has no reachable FFN
    };

    struct llama_context;
    struct llama_model;

    // Name of an activation type ("silu", "leaky_relu", ...), or NULL for an unknown type.
    const char * llama_rewire_act_name(enum llama_rewire_act_type type);

    // Activation type of a name, or -1 when the name is unknown.
    int32_t llama_rewire_act_from_name(const char * name);

    // Check one entry without applying it. Returns LLAMA_REWIRE_OK, _ERR_ACT, _ERR_PARAM or _ERR_EXPR.
    int32_t llama_rewire_act_check(struct llama_rewire_act act);

    // The entry that changes nothing: default activations, no skips, scales 1, the model's own routing.
    struct llama_rewire_layer llama_rewire_layer_identity(void);

    // Number of layers of the table (the model's layer count).
    int32_t llama_rewire_n_layer(const struct llama_context * ctx);

    // Replace the whole table. acts holds n_acts entries, one per layer; n_acts == 0 clears the table
    // (every layer back to its own activation). Takes effect on the next decode: graphs built under the
    // previous table are not reused, the scheduler is re-reserved, and the context's memory (KV cache)
    // is cleared when the table changes. On error nothing changes; *bad_layer (if not NULL) receives the
    // offending layer or -1.
    int32_t llama_rewire_set(
            struct llama_context         * ctx,
            const struct llama_rewire_act * acts,
            int32_t                        n_acts,
            int32_t                      * bad_layer);

    // Replace the whole wiring: n_layers entries, one per layer, or 0 to restore the model. Same rules as
    // llama_rewire_set (next decode, no reuse of older graphs, re-reserve, memory cleared on a change),
    // and every entry is checked against the layer (llama_rewire_layer_describe) first: on error nothing
    // changes and *bad_layer receives the offending layer. Returns LLAMA_REWIRE_OK or an error code.
    int32_t llama_rewire_wiring_set(
            struct llama_context             * ctx,
            const struct llama_rewire_layer  * layers,
            int32_t                            n_layers,
            int32_t                          * bad_layer);

    // The current wiring of layer il: *layer is filled; its heads_off / experts_off / act[].expr point
    // into the context's storage, valid until the next wiring change.
    int32_t llama_rewire_wiring_get(
            const struct llama_context * ctx,
            int32_t                      il,
            struct llama_rewire_layer  * layer);

    // Describe what layer il offers to the wiring (valid right after llama_init_from_model).
    int32_t llama_rewire_layer_describe(
            const struct llama_context     * ctx,
            int32_t                          il,
            struct llama_rewire_layer_info * info);

    // Copy the current table into acts (n_acts must be the layer count): the dense scope's activation.
    int32_t llama_rewire_get(
            const struct llama_context * ctx,
            struct llama_rewire_act    * acts,
            int32_t                      n_acts);

    // Describe the FFN of layer il as built for this context (graphs are built when the context is
    // created, so this is valid right after llama_init_from_model).
    int32_t llama_rewire_ffn_describe(
            const struct llama_context   * ctx,
            int32_t                        il,
            struct llama_rewire_ffn_info * info);

    // Where a loaded model's weights live, one entry per buffer type: "CPU" (or "CPU_Mapped" style
    // host buffers), "CPU_REPACK" and "AMX" (weights repacked for those kernels when the model was
    // loaded with use_extra_bufts), a GPU's name, ... llama_rewire_model_n_buffers returns the number
    // of entries (0 for a vocab-only model, -1 for a NULL model). llama_rewire_model_buffer fills the
    // buffer type's name (a static string owned by ggml) and the bytes it holds for entry i; returns
    // LLAMA_REWIRE_OK, or LLAMA_REWIRE_ERR_ARG for a NULL pointer or an i out of range.
    int32_t llama_rewire_model_n_buffers(const struct llama_model * model);

    int32_t llama_rewire_model_buffer(
            const struct llama_model * model,
            int32_t                    i,
            const char              ** name,
            size_t                   * size);

    // Check a loaded model's hyperparameters and tensor types against what ggml's kernels assert on at
    // decode time (norm epsilons finite and >= 0; rope dimensions positive, even and within the head;
    // norm weights, biases and the SSM's state tensors in F32; no integer-typed weights). Returns
    // LLAMA_REWIRE_OK, or LLAMA_REWIRE_ERR_PARAM with a message naming the value in msg (n bytes).
    int32_t llama_rewire_model_check(const struct llama_model * model, char * msg, size_t n);

    // ---- The residual stream: taps and edits (llama-rewire-resid.cpp) ----
    //
    // Four points of each layer can be read (tapped) and written (edited). Each is a tensor of `width`
    // floats per token:
    //   RESID_POST  the residual stream after the layer (where llama.cpp's control vectors add)  n_embd
    //   ATTN_OUT    attention's contribution to the residual stream, after its post-norm and
    //               attn_scale where the architecture has one                                   n_embd
    //   FFN_OUT     the FFN's contribution (after its post-norm and ffn_scale)                     n_embd
    //   FFN_ACT     the input of ffn_down (act(gate) * up) of a dense FFN                          n_ff
    // FFN_OUT is not one tensor in a layer that adds a shared expert to routed experts, and FFN_ACT
    // exists for dense FFNs only: llama_rewire_point_width returns 0 there, and taps or edits of them are
    // refused (LLAMA_REWIRE_ERR_POINT). A sublayer the wiring skips has no ATTN_OUT / FFN_OUT / FFN_ACT
    // in the graph: a tap of it is not there to read, an edit of it does nothing.
    enum llama_rewire_point {
        LLAMA_REWIRE_POINT_RESID_POST = 0,
        LLAMA_REWIRE_POINT_ATTN_OUT   = 1,
        LLAMA_REWIRE_POINT_FFN_OUT    = 2,
        LLAMA_REWIRE_POINT_FFN_ACT    = 3,
        LLAMA_REWIRE_POINT_COUNT,
    };

    // What an edit does to the point's value h (one row per token), in this order when a point has several:
    //   PATCH   h = values[j] at the tokens whose position is pos[j] (n rows); other tokens keep h
    //   ABLATE  h = h - R^T (R h), R the n orthonormal rows of values, at positions [pos_begin, pos_end)
    //   ADD     h = h + values (one row, alpha already applied), at positions [pos_begin, pos_end)
    // A position is the token's position in its sequence (llama_batch::pos); pos_end = -1 has no end.
    enum llama_rewire_edit_kind {
        LLAMA_REWIRE_EDIT_PATCH  = 0,
        LLAMA_REWIRE_EDIT_ABLATE = 1,
        LLAMA_REWIRE_EDIT_ADD    = 2,
        LLAMA_REWIRE_EDIT_COUNT,
    };

    struct llama_rewire_edit {
        int32_t         kind;      // llama_rewire_edit_kind
        int32_t         point;     // llama_rewire_point
        int32_t         il;        // layer
        int32_t         n;         // rows of values: ADD 1, ABLATE the directions (1..width), PATCH the positions
        const float   * values;    // [n][width] row-major, finite
        const int32_t * pos;       // PATCH: [n] distinct positions >= 0; else unused
        int32_t         pos_begin; // ADD, ABLATE: the positions it applies to, [pos_begin, pos_end)
        int32_t         pos_end;
    };

    // The width of a point of layer il in this context (n_embd or n_ff), 0 where the layer has no such
    // tensor, or LLAMA_REWIRE_ERR_ARG / _ERR_LAYER.
    int32_t llama_rewire_point_width(const struct llama_context * ctx, int32_t point, int32_t il);

    // Replace all edits (n_edits == 0 removes them), at most one of each kind per point and layer. The
    // values are copied. When only values and positions change (the same kinds at the same points, the
    // same number of ablated directions) the graphs are kept and reused and the next decode reads the new
    // values: no re-reserve. Otherwise graphs are rebuilt and the scheduler re-reserved. The context's
    // memory is never cleared: keys and values already computed stay as they are (the caller decides
    // whether they are stale). No edit adds no node: the graph is upstream's. On error nothing changes
    // and *bad_edit (if not NULL) receives the offending index. Returns LLAMA_REWIRE_OK or an error code.
    int32_t llama_rewire_edits_set(
            struct llama_context           * ctx,
            const struct llama_rewire_edit * edits,
            int32_t                          n_edits,
            int32_t                        * bad_edit);

    // Which points to keep for reading after each decode: taps[il] is a bit mask of (1 << point), n_taps
    // the layer count, or 0 to tap nothing. A tapped tensor is a graph output (its memory is not reused
    // within the graph); a change of the taps rebuilds graphs and re-reserves the scheduler.
    int32_t llama_rewire_taps_set(struct llama_context * ctx, const uint32_t * taps, int32_t n_taps);

    // After llama_decode: a tapped point of the last ubatch computed. Returns its number of rows: the
    // ubatch's tokens. (llama.cpp computes only the rows with outputs inside the last layer; a tapped last
    // layer keeps them all and the rows with outputs are picked after it, where the architecture's graph
    // uses those rows for nothing else; elsewhere the last layer has only the rows with outputs.) Sets
    // *width, and when out is
    // not NULL copies rows * width floats into it (n_out floats at most: LLAMA_REWIRE_ERR_ARG if fewer)
    // and, when pos is not NULL, the rows' positions into pos ([rows]; -1 where unknown). Returns
    // LLAMA_REWIRE_ERR_POINT when the point was not tapped in the last graph computed.
    int32_t llama_rewire_tap_read(
            struct llama_context * ctx,
            int32_t                point,
            int32_t                il,
            float                * out,
            int64_t                n_out,
            int64_t              * width,
            int32_t              * pos);

    // ---- Inspection: the nodes of a graph (llama-rewire-inspect.cpp) ----
    //
    // llama_rewire_graph_nodes builds the graph of a ubatch of n_tokens tokens (0: the worst case the
    // context reserves, n_ubatch tokens over every sequence) under the current wiring, taps and edits,
    // splits it between the scheduler's backends without computing or allocating anything, and calls fn
    // for every node in order with the backend it was assigned to (NULL where none is). The next decode
    // builds its own graph again. Returns the number of graph splits, or LLAMA_REWIRE_ERR_ARG for a null
    // context or fn, LLAMA_REWIRE_ERR_RESERVE when the graph can't be built. For tests and tools: which
    // ops a wiring builds, and where a backend would run them.
    struct ggml_tensor;
    typedef void (*llama_rewire_node_fn)(
            const struct ggml_tensor * node, const char * backend, void * user_data);

    int32_t llama_rewire_graph_nodes(
            struct llama_context * ctx,
            uint32_t               n_tokens,
            llama_rewire_node_fn   fn,
            void                 * user_data);

    // Inside the llama library a failed GGML_ASSERT / GGML_ABORT throws (llama-rewire-abort.h): the API
    // call that hit it returns its error (llama_model_load_from_file: NULL) or lets the exception out to a
    // C++ caller. llama_rewire_last_abort returns the message of the last one on this thread ("file:line:
    // GGML_ASSERT(...) failed"), or NULL; llama_rewire_clear_abort forgets it.
    const char * llama_rewire_last_abort(void);

    void llama_rewire_clear_abort(void);

#ifdef __cplusplus
}
#endif

#endif // LLAMA_REWIRE_H
