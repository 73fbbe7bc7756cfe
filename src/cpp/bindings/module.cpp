// llama_rewire._core: thin wrappers shaped like llama.h.
#include "core.h"

#include <atomic>
#include <cstdio>

namespace rewire {

// Log lines at or above this level reach stderr; the rest are dropped. Set from Python (verbose).
static std::atomic<int> g_log_level{GGML_LOG_LEVEL_ERROR};
static std::atomic<int> g_log_last{GGML_LOG_LEVEL_NONE};

static void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    // continuation lines take the level of the line they continue
    if (level == GGML_LOG_LEVEL_CONT) {
        level = (ggml_log_level) g_log_last.load();
    } else {
        g_log_last = level;
    }
    if ((int) level >= g_log_level.load()) {
        std::fputs(text, stderr);
        std::fflush(stderr);
    }
}

} // namespace rewire

PYBIND11_MODULE(_core, m) {
    using namespace rewire;
    m.doc() = "llama.cpp with per-layer FFN activation overrides (thin bindings)";

    py::register_exception<model_load_error>(m, "ModelLoadError", PyExc_ValueError);
    py::register_exception<decode_error>(m, "DecodeError", PyExc_RuntimeError);
    py::register_exception<closed_error>(m, "ClosedError", PyExc_RuntimeError);

    llama_log_set(log_callback, nullptr);
    llama_backend_init();

    m.def("set_log_level", [](int level) { g_log_level = level; },
          py::arg("level"),
          "Messages of llama.cpp at or above this ggml_log_level (0 none .. 4 error) go to stderr; 5 silences all.");
    m.def("system_info", []() { return std::string(llama_print_system_info()); });
    m.def("supports_gpu_offload", []() { return llama_supports_gpu_offload(); });

    m.attr("LOG_LEVEL_DEBUG") = (int) GGML_LOG_LEVEL_DEBUG;
    m.attr("LOG_LEVEL_INFO")  = (int) GGML_LOG_LEVEL_INFO;
    m.attr("LOG_LEVEL_WARN")  = (int) GGML_LOG_LEVEL_WARN;
    m.attr("LOG_LEVEL_ERROR") = (int) GGML_LOG_LEVEL_ERROR;
    m.attr("LOG_LEVEL_SILENT") = (int) GGML_LOG_LEVEL_ERROR + 1;

    bind_model(m);
    bind_context(m);
    bind_sampler(m);
    bind_rewire(m);
}
