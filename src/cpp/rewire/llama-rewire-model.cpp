// llama-rewire: what a loaded model reports about itself beyond llama.h (where its weights live).
#include "llama-rewire.h"

#include "llama-model.h"

#include "ggml-backend.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <string>

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

// The tensors whose type ggml's element-wise kernels fix: 1-D tensors (norm weights, biases, scales) and
// the SSM state tensors are read as F32 by the ops that use them.
static bool rewire_needs_f32(const std::string & name, const ggml_tensor * t) {
    if (ggml_n_dims(t) == 1) {
        return true;
    }
    for (const char * part : {".ssm_a", ".ssm_d", ".ssm_conv1d."}) {
        if (name.find(part) != std::string::npos) {
            return true;
        }
    }
    return false;
}

static bool rewire_is_integer(ggml_type type) {
    return type == GGML_TYPE_I8 || type == GGML_TYPE_I16 || type == GGML_TYPE_I32 || type == GGML_TYPE_I64;
}

int32_t llama_rewire_model_check(const struct llama_model * model, char * msg, size_t n) {
    if (model == nullptr || msg == nullptr || n == 0) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    msg[0] = '\0';
    const llama_hparams & hp = model->hparams;
    for (const auto & [key, eps] : {std::pair<const char *, float>{"layer_norm_epsilon", hp.f_norm_eps},
                                    std::pair<const char *, float>{"layer_norm_rms_epsilon", hp.f_norm_rms_eps}}) {
        if (!std::isfinite(eps) || eps < 0.0f) {
            std::snprintf(msg, n, "attention.%s is %g: a norm epsilon must be finite and >= 0", key, eps);
            return LLAMA_REWIRE_ERR_PARAM;
        }
    }
    if (hp.rope_type != LLAMA_ROPE_TYPE_NONE && hp.n_layer() > 0) {
        const uint32_t n_rot  = hp.n_rot();
        const uint32_t n_head = hp.n_embd_head_k();
        if (n_rot == 0 || n_rot % 2 != 0 || n_rot > n_head) {
            std::snprintf(msg, n, "rope.dimension_count is %u: it must be even, positive and at most the head "
                          "size (%u)", n_rot, n_head);
            return LLAMA_REWIRE_ERR_PARAM;
        }
    }
    for (const auto & [name, t] : model->tensors_by_name) {
        const bool tid_table = name.find("tid2eid") != std::string::npos; // deepseek4's token -> expert ids
        if (rewire_is_integer(t->type) && !tid_table) {
            std::snprintf(msg, n, "tensor '%s' has the integer type %s: weights are float or quantized",
                          name.c_str(), ggml_type_name(t->type));
            return LLAMA_REWIRE_ERR_PARAM;
        }
        if (!tid_table && t->type != GGML_TYPE_F32 && rewire_needs_f32(name, t)) {
            std::snprintf(msg, n, "tensor '%s' has type %s: llama.cpp reads it as F32", name.c_str(),
                          ggml_type_name(t->type));
            return LLAMA_REWIRE_ERR_PARAM;
        }
    }
    return LLAMA_REWIRE_OK;
}
