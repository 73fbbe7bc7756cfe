// llama-rewire: what a loaded model reports about itself beyond llama.h (where its weights live).
#include "llama-rewire.h"

#include "llama-model.h"

#include "ggml-backend.h"

#include <iterator>
#include <map>

int32_t llama_rewire_model_n_buffers(const struct llama_model * model) {
    if (model == nullptr) {
        return -1;
    }
    return (int32_t) model->memory_breakdown().size();
}

int32_t llama_rewire_model_buffer(const struct llama_model * model, int32_t i, const char ** name, size_t * size) {
    if (model == nullptr || name == nullptr || size == nullptr || i < 0) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const std::map<ggml_backend_buffer_type_t, size_t> breakdown = model->memory_breakdown();
    if (i >= (int32_t) breakdown.size()) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    auto it = std::next(breakdown.begin(), i);
    *name = ggml_backend_buft_name(it->first);
    *size = it->second;
    return LLAMA_REWIRE_OK;
}
