// llama-rewire: per-layer FFN activation overrides for llama.cpp.
//
// This header is included at the end of llama.h (patches/0001). It is the contract of the hook: each
// llama_context holds a table with one entry per layer; an entry other than LLAMA_REWIRE_ACT_DEFAULT
// replaces the activation of that layer's feed-forward networks (dense FFN, shared experts and routed
// experts alike) the next time a graph is built:
//
//   gated FFN:  down(act(gate(x)) * up(x))      the override replaces the gate activation
//   plain FFN:  down(act(up(x)))                the override replaces the one activation
//   fused GLU:  one gate_up tensor is split in halves, act(first half) * second half
//
// An overridden activation is a graph node named "ffn_rewire_act-<layer>" unless it runs as a fused GLU
// kernel (silu, gelu, gelu_erf, gelu_quick, relu without threshold): observers (cb_eval) can read it.
// A thresholded one is also available before thresholding, as "ffn_rewire_raw-<layer>".
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
        LLAMA_REWIRE_ACT_COUNT,
    };

    // One table entry. With threshold t > 0 the activation is sparsified: a = act(x) is kept where
    // |a| > t and set to 0 elsewhere (CATS-style thresholding; t finite, >= 0; not with DEFAULT).
    struct llama_rewire_act {
        enum llama_rewire_act_type type;
        float                      param;     // ignored by activations without a parameter
        float                      threshold; // 0: no thresholding
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

    // Check one entry without applying it. Returns LLAMA_REWIRE_OK, _ERR_ACT or _ERR_PARAM.
    int32_t llama_rewire_act_check(struct llama_rewire_act act);

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

    // Copy the current table into acts (n_acts must be the layer count).
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

#ifdef __cplusplus
}
#endif

#endif // LLAMA_REWIRE_H
