// llama_rewire._core: thin wrappers shaped like llama.h.
#include "core.h"

namespace rewire {
void bind_capi(py::module_ & m); // capi.cpp (generated): the addresses the ctypes C API calls
} // namespace rewire

PYBIND11_MODULE(_core, m) {
    using namespace rewire;
    m.doc() = "llama.cpp with per-layer FFN activation overrides (thin bindings)";

    py::register_exception<model_load_error>(m, "ModelLoadError", PyExc_ValueError);
    auto decode_error_type = py::register_exception<decode_error>(m, "DecodeError", PyExc_RuntimeError);
    py::register_exception<rpc_lost_error>(m, "RPCServerLostError", decode_error_type);
    py::register_exception<closed_error>(m, "ClosedError", PyExc_RuntimeError);
    py::register_exception<grammar_error>(m, "GrammarError", PyExc_ValueError);
    py::register_exception<chat_error>(m, "ChatFormatError", PyExc_ValueError);
    py::register_exception<non_finite_error>(m, "NonFiniteLogitsError", PyExc_ValueError);

    bind_log(m);
    bind_rpc(m);
    bind_backends(m);
    llama_backend_init();

    m.def("system_info", []() { return std::string(llama_print_system_info()); });
    m.def("cpu_features", []() {
        // what the CPU backend reports: build-time and detected features ("AVX2", "AMX_INT8", ...)
        py::list out;
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
        auto get = reg ? (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features")
                       : nullptr;
        if (get != nullptr) {
            for (ggml_backend_feature * f = get(reg); f->name != nullptr; ++f) {
                out.append(py::make_tuple(std::string(f->name), std::string(f->value)));
            }
        }
        return out;
    });
    m.def("cpu_extra_buffer_types", []() {
        // the CPU device's extra buffer types, into which use_extra_bufts repacks weights ("AMX", "CPU_REPACK")
        py::list out;
        ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
        auto get = reg ? (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
                             reg, "ggml_backend_dev_get_extra_bufts")
                       : nullptr;
        if (get != nullptr) {
            for (ggml_backend_buffer_type_t * b = get(dev); b != nullptr && *b != nullptr; ++b) {
                out.append(std::string(ggml_backend_buft_name(*b)));
            }
        }
        return out;
    });
    m.def("supports_gpu_offload", []() { return llama_supports_gpu_offload(); });
    // the devices of the backends in this build (llama_supports_gpu_offload is also true for the RPC
    // backend alone, which has no device until a server is added): (name, description, kind)
    m.def("backend_devices", []() {
        py::list out;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            const char * kind = "other";
            switch (ggml_backend_dev_type(dev)) {
                case GGML_BACKEND_DEVICE_TYPE_CPU:   kind = "cpu";   break;
                case GGML_BACKEND_DEVICE_TYPE_GPU:   kind = "gpu";   break;
                case GGML_BACKEND_DEVICE_TYPE_IGPU:  kind = "igpu";  break;
                case GGML_BACKEND_DEVICE_TYPE_ACCEL: kind = "accel"; break;
                default: break;
            }
            out.append(py::make_tuple(std::string(ggml_backend_dev_name(dev)),
                                      std::string(ggml_backend_dev_description(dev)), std::string(kind)));
        }
        return out;
    });

    // the enum values users pass to Llama(...), as llama_cpp exposes them
    m.attr("LLAMA_VOCAB_TYPE_NONE") = (int) LLAMA_VOCAB_TYPE_NONE;
    m.attr("LLAMA_VOCAB_TYPE_SPM") = (int) LLAMA_VOCAB_TYPE_SPM;
    m.attr("LLAMA_VOCAB_TYPE_BPE") = (int) LLAMA_VOCAB_TYPE_BPE;
    m.attr("LLAMA_VOCAB_TYPE_WPM") = (int) LLAMA_VOCAB_TYPE_WPM;
    m.attr("LLAMA_VOCAB_TYPE_UGM") = (int) LLAMA_VOCAB_TYPE_UGM;
    m.attr("LLAMA_VOCAB_TYPE_RWKV") = (int) LLAMA_VOCAB_TYPE_RWKV;
    m.attr("LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED") = (int) LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED;
    m.attr("LLAMA_ROPE_SCALING_TYPE_NONE") = (int) LLAMA_ROPE_SCALING_TYPE_NONE;
    m.attr("LLAMA_ROPE_SCALING_TYPE_LINEAR") = (int) LLAMA_ROPE_SCALING_TYPE_LINEAR;
    m.attr("LLAMA_ROPE_SCALING_TYPE_YARN") = (int) LLAMA_ROPE_SCALING_TYPE_YARN;
    m.attr("LLAMA_ROPE_SCALING_TYPE_LONGROPE") = (int) LLAMA_ROPE_SCALING_TYPE_LONGROPE;
    m.attr("LLAMA_POOLING_TYPE_UNSPECIFIED") = (int) LLAMA_POOLING_TYPE_UNSPECIFIED;
    m.attr("LLAMA_POOLING_TYPE_NONE") = (int) LLAMA_POOLING_TYPE_NONE;
    m.attr("LLAMA_POOLING_TYPE_MEAN") = (int) LLAMA_POOLING_TYPE_MEAN;
    m.attr("LLAMA_POOLING_TYPE_CLS") = (int) LLAMA_POOLING_TYPE_CLS;
    m.attr("LLAMA_POOLING_TYPE_LAST") = (int) LLAMA_POOLING_TYPE_LAST;
    m.attr("LLAMA_POOLING_TYPE_RANK") = (int) LLAMA_POOLING_TYPE_RANK;
    m.attr("LLAMA_ATTENTION_TYPE_UNSPECIFIED") = (int) LLAMA_ATTENTION_TYPE_UNSPECIFIED;
    m.attr("LLAMA_ATTENTION_TYPE_CAUSAL") = (int) LLAMA_ATTENTION_TYPE_CAUSAL;
    m.attr("LLAMA_ATTENTION_TYPE_NON_CAUSAL") = (int) LLAMA_ATTENTION_TYPE_NON_CAUSAL;
    m.attr("LLAMA_FLASH_ATTN_TYPE_AUTO") = (int) LLAMA_FLASH_ATTN_TYPE_AUTO;
    m.attr("LLAMA_FLASH_ATTN_TYPE_DISABLED") = (int) LLAMA_FLASH_ATTN_TYPE_DISABLED;
    m.attr("LLAMA_FLASH_ATTN_TYPE_ENABLED") = (int) LLAMA_FLASH_ATTN_TYPE_ENABLED;
    m.attr("LLAMA_SPLIT_MODE_NONE") = (int) LLAMA_SPLIT_MODE_NONE;
    m.attr("LLAMA_SPLIT_MODE_LAYER") = (int) LLAMA_SPLIT_MODE_LAYER;
    m.attr("LLAMA_SPLIT_MODE_ROW") = (int) LLAMA_SPLIT_MODE_ROW;
    m.attr("GGML_TYPE_F32") = (int) GGML_TYPE_F32;
    m.attr("GGML_TYPE_F16") = (int) GGML_TYPE_F16;
    m.attr("GGML_TYPE_Q4_0") = (int) GGML_TYPE_Q4_0;
    m.attr("GGML_TYPE_Q4_1") = (int) GGML_TYPE_Q4_1;
    m.attr("GGML_TYPE_Q5_0") = (int) GGML_TYPE_Q5_0;
    m.attr("GGML_TYPE_Q5_1") = (int) GGML_TYPE_Q5_1;
    m.attr("GGML_TYPE_Q8_0") = (int) GGML_TYPE_Q8_0;
    m.attr("GGML_TYPE_Q2_K") = (int) GGML_TYPE_Q2_K;
    m.attr("GGML_TYPE_Q3_K") = (int) GGML_TYPE_Q3_K;
    m.attr("GGML_TYPE_Q4_K") = (int) GGML_TYPE_Q4_K;
    m.attr("GGML_TYPE_Q5_K") = (int) GGML_TYPE_Q5_K;
    m.attr("GGML_TYPE_Q6_K") = (int) GGML_TYPE_Q6_K;
    m.attr("GGML_TYPE_IQ4_NL") = (int) GGML_TYPE_IQ4_NL;
    m.attr("GGML_TYPE_BF16") = (int) GGML_TYPE_BF16;

    bind_model(m);
    bind_context(m);
    bind_sampler(m);
    bind_rewire(m);
    bind_resid(m);
    bind_chat(m);
    bind_capi(m);
}
