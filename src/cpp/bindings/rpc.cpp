// llama.cpp's RPC backend: the devices of a remote ggml RPC server, and serving this machine's CPU as one.
#include "core.h"

#include "ggml-backend.h"
#include "ggml-rpc.h"

#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace rewire {

// Registering an endpoint connects to it; ggml aborts when that fails. The Python side probes the
// endpoint first (connect and handshake, with a timeout), so an abort here means it went away since: it
// throws instead, on this thread, while the callback is set.
// The RPC backend's functions are reached through its registry, so that the same code serves the native
// build (RPC linked in) and the portable one (RPC a module, registered once it is loaded).
template <typename F> static F * rpc_function(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    void * fn = reg ? ggml_backend_reg_get_proc_address(reg, name) : nullptr;
    if (fn == nullptr) {
        throw std::runtime_error(std::string("this build has no RPC backend (") + name + ")");
    }
    return (F *) fn;
}

[[noreturn]] static void rpc_abort_as_exception(const char * message) {
    throw std::runtime_error(message ? message : "ggml abort");
}

std::vector<ggml_backend_dev_t> rpc_devices(const std::string & endpoint) {
    static std::mutex mutex;  // the abort callback is process-wide
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<ggml_backend_dev_t> out;
    ggml_backend_reg_t reg = nullptr;
    std::string error;
    auto * add_server = rpc_function<decltype(ggml_backend_rpc_add_server)>("ggml_backend_rpc_add_server");
    {
        py::gil_scoped_release release;
        ggml_abort_callback_t previous = ggml_set_abort_callback(rpc_abort_as_exception);
        try {
            reg = add_server(endpoint.c_str());
        } catch (const std::exception & e) {
            error = e.what();
        }
        ggml_set_abort_callback(previous);
    }
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) {
        error.pop_back();
    }
    if (!error.empty()) {
        throw std::runtime_error("RPC server " + endpoint + ": " + error);
    }
    if (reg == nullptr) {
        // a connection that failed, a server silent past the timeout, or an answer the client refuses
        // (the log says which) marks the endpoint lost
        auto * lost = rpc_function<decltype(ggml_backend_rpc_lost)>("ggml_backend_rpc_lost");
        if (lost(endpoint.c_str())) {
            throw std::runtime_error("RPC server " + endpoint + " did not answer, or answered what a "
                                     "server of this protocol does not");
        }
        throw std::runtime_error("RPC server " + endpoint + " has no devices");
    }
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) {
        out.push_back(ggml_backend_reg_dev_get(reg, i));
    }
    return out;
}

static bool rpc_lost(const std::string & endpoint) {
    static auto * lost = rpc_function<decltype(ggml_backend_rpc_lost)>("ggml_backend_rpc_lost");
    return lost(endpoint.c_str());
}

std::string model::lost_rpc_endpoint() const {
    for (const std::string & endpoint : rpc_endpoints) {
        if (rpc_lost(endpoint)) {
            return endpoint;
        }
    }
    return "";
}

// Serve this machine's CPU over RPC until the process ends (ggml's server loop does not return on its
// own). The GIL is released meanwhile, so the calling Python thread can be a daemon thread.
static void rpc_serve(const std::string & endpoint, const std::optional<std::string> & cache_dir, int n_threads,
                      uint32_t timeout_ms, uint64_t max_message_size) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        throw std::runtime_error("no CPU device to serve");
    }
    const std::string dir = cache_dir.value_or("");
    auto * start_server = rpc_function<decltype(ggml_backend_rpc_start_server)>("ggml_backend_rpc_start_server");
    auto * set_limits = rpc_function<decltype(ggml_backend_rpc_set_server_limits)>("ggml_backend_rpc_set_server_limits");
    set_limits(timeout_ms, max_message_size);
    py::gil_scoped_release release;
    start_server(endpoint.c_str(), cache_dir ? dir.c_str() : nullptr, (size_t) n_threads, 1, &cpu);
}

void bind_rpc(py::module_ & m) {
    m.attr("RPC_PROTO_MAJOR_VERSION") = RPC_PROTO_MAJOR_VERSION;
    m.attr("RPC_PROTO_MINOR_VERSION") = RPC_PROTO_MINOR_VERSION;
    m.attr("RPC_PROTO_PATCH_VERSION") = RPC_PROTO_PATCH_VERSION;
    m.attr("RPC_MAX_SERVERS") = GGML_RPC_MAX_SERVERS;
    m.def("rpc_lost", &rpc_lost,
          py::arg("endpoint"), "Whether the connection to an RPC server failed since it was last made.");
    m.def("rpc_device_names", [](const std::string & endpoint) {
        std::vector<std::string> names;
        for (ggml_backend_dev_t dev : rpc_devices(endpoint)) {
            names.push_back(std::string(ggml_backend_dev_name(dev)) + " (" + ggml_backend_dev_description(dev) + ")");
        }
        return names;
    }, py::arg("endpoint"), "Register an RPC server (once per process) and name its devices.");
    m.def("rpc_serve", &rpc_serve, py::arg("endpoint"), py::arg("cache_dir") = py::none(), py::arg("n_threads") = 1,
          py::arg("timeout_ms") = 60000, py::arg("max_message_size") = 256ull << 20,
          "Serve this machine's CPU as an RPC device on endpoint (host:port); returns only if the server cannot start.");
    m.def("rpc_set_timeout", [](uint32_t timeout_ms) {
        rpc_function<decltype(ggml_backend_rpc_set_timeout)>("ggml_backend_rpc_set_timeout")(timeout_ms);
    }, py::arg("timeout_ms"), "How long this process waits for an RPC server's answer (ms; 0: no limit).");
}

} // namespace rewire
