// Shared declarations of the llama_rewire._core bindings.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "llama.h"
#include "ggml-backend.h"

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace rewire {

// Raised when a model cannot be loaded (a ValueError, as in llama-cpp-python).
class model_load_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Raised when llama_decode fails (a RuntimeError, as in llama-cpp-python).
class decode_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Raised when an RPC server the model runs on went away (an RPCServerLostError, a DecodeError).
class rpc_lost_error : public decode_error {
    using decode_error::decode_error;
};

// Raised for a GBNF grammar that does not parse, or a token it rejects (a ValueError).
class grammar_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Raised when a decode's logits are NaN or infinite: the computation overflowed (a ValueError).
class non_finite_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Raised when a chat template cannot render the messages or parse the output (a ValueError).
class chat_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Raised for a closed model or context (a RuntimeError).
class closed_error : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The first error llama.cpp logged on this thread since log_errors_clear() (log.cpp).
void        log_errors_clear();
std::string log_first_error();

// Owns a llama_model. Contexts hold a shared_ptr to it, so the model outlives them.
class model {
public:
    explicit model(llama_model * ptr) : ptr_(ptr) {}
    ~model() {
        if (ptr_) {
            llama_model_free(ptr_);
        }
    }
    model(const model &) = delete;
    model & operator=(const model &) = delete;

    void close() {
        if (n_contexts_ > 0) {
            throw closed_error("the model still has " + std::to_string(n_contexts_) + " open context(s): close them first");
        }
        if (ptr_) {
            llama_model_free(ptr_);
            ptr_ = nullptr;
        }
    }
    void context_opened() { ++n_contexts_; }
    void context_closed() { --n_contexts_; }
    bool closed() const { return ptr_ == nullptr; }
    llama_model * get() const {
        if (!ptr_) {
            throw closed_error("the model is closed");
        }
        return ptr_;
    }
    const llama_vocab * vocab() const { return llama_model_get_vocab(get()); }

    // The RPC servers the model's layers run on (llama-rewire rpc-server), and the first whose
    // connection is lost ("" while all are up).
    std::vector<std::string> rpc_endpoints;
    std::string lost_rpc_endpoint() const;

private:
    llama_model * ptr_;
    int n_contexts_ = 0;
};

llama_context * context_ptr(py::handle ctx);

void bind_model(py::module_ & m);
void bind_context(py::module_ & m);
void bind_sampler(py::module_ & m);
void bind_rewire(py::module_ & m);
void bind_resid(py::module_ & m);
void bind_chat(py::module_ & m);
void bind_log(py::module_ & m);
void bind_rpc(py::module_ & m);
void bind_backends(py::module_ & m);

// The devices of an RPC server "host:port", registered once per process (rpc.cpp).
std::vector<ggml_backend_dev_t> rpc_devices(const std::string & endpoint);

} // namespace rewire
