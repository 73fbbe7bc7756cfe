// llama-rewire: a graph input whose values the wiring fixes when the graph is built (zeros for a skipped
// sublayer, a head or expert mask). Graphs are only reused under the same wiring (rewire_gen), so the
// values never change for a built graph; only the token count must match.
#pragma once

#include "llama-graph.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <utility>
#include <vector>

class llama_rewire_input : public llm_graph_input_i {
public:
    // values: the tensor's contents, or empty for zeros. A tensor whose ne[1] counts tokens is
    // rebuilt when the token count changes; masks ([1, n] or [n, 1]) are not.
    llama_rewire_input(ggml_tensor * t, std::vector<float> values) : t(t), values(std::move(values)) {}

    void set_input(const llama_ubatch * ubatch) override {
        GGML_UNUSED(ubatch);
        if (values.empty()) {
            ggml_backend_tensor_memset(t, 0, 0, ggml_nbytes(t));
        } else {
            ggml_backend_tensor_set(t, values.data(), 0, values.size() * sizeof(float));
        }
    }

    bool can_reuse(const llm_graph_params & params) override {
        return !values.empty() || t->ne[1] == (int64_t) params.ubatch.n_tokens;
    }

    ggml_tensor *      t;
    std::vector<float> values;
};
