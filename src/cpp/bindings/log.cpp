// Log bridge: llama.cpp's log callback, filtered by level natively, forwarded to a Python callable
// (which hands the text to the logging module) or, with no callable, to stderr.
#include "core.h"

#include "log.h"

#include <atomic>
#include <cstdio>
#include <string>

namespace rewire {

static std::atomic<int> g_log_level{GGML_LOG_LEVEL_ERROR};
static std::atomic<int> g_log_last{GGML_LOG_LEVEL_NONE};
static std::atomic<PyObject *> g_log_sink{nullptr};  // a strong reference, never released
static thread_local std::string g_first_error;       // the first error message since log_errors_clear

void log_errors_clear() {
    g_first_error.clear();
}

std::string log_first_error() {
    return g_first_error;
}

static bool python_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

static void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    // continuation lines take the level of the line they continue
    if (level == GGML_LOG_LEVEL_CONT) {
        level = (ggml_log_level) g_log_last.load();
    } else {
        g_log_last = level;
    }
    if (level == GGML_LOG_LEVEL_ERROR && g_first_error.empty() && text != nullptr) {
        g_first_error = text;  // what a failing call said first, for its exception (whatever the level shown)
    }
    if ((int) level < g_log_level.load()) {
        return;
    }
    PyObject * sink = g_log_sink.load();
    if (sink == nullptr) {
        std::fputs(text, stderr);
        std::fflush(stderr);
        return;
    }
    if (!Py_IsInitialized() || python_finalizing()) {
        return;
    }
    py::gil_scoped_acquire acquire;
    PyObject * r = PyObject_CallFunction(sink, "is", (int) level, text);
    if (r == nullptr) {
        PyErr_Clear();  // a failing log handler must not break inference
    } else {
        Py_DECREF(r);
    }
}

void bind_log(py::module_ & m) {
    llama_log_set(log_callback, nullptr);
    // llama.cpp's common library has a logger of its own: keep it quiet (errors surface as exceptions)
    common_log_set_verbosity_thold(-1);

    m.def("set_log_level", [](int level) { g_log_level = level; }, py::arg("level"),
          "Messages of llama.cpp at or above this ggml_log_level (1 debug .. 4 error) are passed on; 5 drops all.");
    m.def("get_log_level", []() { return g_log_level.load(); });
    m.def("set_log_sink", [](py::object sink) {
              PyObject * obj = sink.is_none() ? nullptr : sink.ptr();
              Py_XINCREF(obj);
              g_log_sink.store(obj);  // the previous sink is leaked on purpose: a log call may be using it
          }, py::arg("sink"),
          "sink(level: int, text: str) receives each message (text may be a partial line); None: stderr.");
    m.attr("LOG_LEVEL_DEBUG")  = (int) GGML_LOG_LEVEL_DEBUG;
    m.attr("LOG_LEVEL_INFO")   = (int) GGML_LOG_LEVEL_INFO;
    m.attr("LOG_LEVEL_WARN")   = (int) GGML_LOG_LEVEL_WARN;
    m.attr("LOG_LEVEL_ERROR")  = (int) GGML_LOG_LEVEL_ERROR;
    m.attr("LOG_LEVEL_SILENT") = (int) GGML_LOG_LEVEL_ERROR + 1;
}

} // namespace rewire
