// llama-rewire: the internal side of the hook, used by the call sites that patches/ add to llama.cpp.
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

// Per-context state, owned through llama_cparams::rewire (a shared_ptr, so that the copies of cparams
// that graphs keep stay valid). llama_cparams::rewire_gen is bumped with every change of the table and
// takes part in llm_graph_params::allow_reuse, so a graph built under another table is never reused.
struct llama_rewire_state {
    std::vector<llama_rewire_act> acts; // [n_layer] the override table

    // What the graph builder saw, recorded while building: the architecture's own activation per layer.
    struct seen {
        int32_t kinds   = 0;             // llama_rewire_ffn_kind bits
        int32_t op      = LLM_FFN_NONE;  // llm_ffn_op_type of the last FFN built in the layer
        bool    gated   = false;
        bool    fused   = false;
        bool    clamped = false;
    };
    std::vector<seen> ffn;              // [n_layer]
};

std::shared_ptr<llama_rewire_state> llama_rewire_state_init(uint32_t n_layer);

// Graph nodes an override can add, at most, to one model graph (added to graph_max_nodes).
uint32_t llama_rewire_max_extra_nodes(uint32_t n_layer);

// Called by build_ffn (kind = LLAMA_REWIRE_FFN_DENSE) and build_moe_ffn (kind = LLAMA_REWIRE_FFN_MOE)
// just before their activation switch. Records what the layer uses, then returns nullptr when layer il
// has no override (the caller builds its own activation), or the activated tensor:
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
