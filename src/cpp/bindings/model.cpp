// Model: loading, metadata and the vocabulary.
#include "core.h"

#include <cstdio>
#include <vector>

namespace rewire {

// GGUF metadata overrides: {key: bool | int | float | str}, terminated by an empty key.
static std::vector<llama_model_kv_override> kv_overrides_from(const py::dict & d) {
    std::vector<llama_model_kv_override> out;
    for (const auto & item : d) {
        const std::string key = py::str(item.first);
        if (key.empty() || key.size() >= 128) {
            throw py::value_error("kv_overrides: keys must have 1 to 127 characters: '" + key + "'");
        }
        llama_model_kv_override o{};
        std::snprintf(o.key, sizeof(o.key), "%s", key.c_str());
        const py::handle v = item.second;
        if (py::isinstance<py::bool_>(v)) {
            o.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL;
            o.val_bool = v.cast<bool>();
        } else if (py::isinstance<py::int_>(v)) {
            o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
            o.val_i64 = v.cast<int64_t>();
        } else if (py::isinstance<py::float_>(v)) {
            o.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT;
            o.val_f64 = v.cast<double>();
        } else if (py::isinstance<py::str>(v)) {
            const std::string sv = v.cast<std::string>();
            if (sv.size() >= 128) {
                throw py::value_error("kv_overrides: string values must be shorter than 128 bytes: '" + key + "'");
            }
            o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
            std::snprintf(o.val_str, sizeof(o.val_str), "%s", sv.c_str());
        } else {
            throw py::value_error("kv_overrides: the value of '" + key + "' must be a bool, int, float or str");
        }
        out.push_back(o);
    }
    if (!out.empty()) {
        out.push_back(llama_model_kv_override{});
    }
    return out;
}

static std::shared_ptr<model> model_load(const std::string & path, int n_gpu_layers, bool use_mmap,
                                         bool use_mlock, bool vocab_only, int main_gpu, int split_mode,
                                         const std::vector<float> & tensor_split, const py::dict & kv_overrides,
                                         bool use_extra_bufts, const std::vector<std::string> & rpc_servers) {
    llama_model_params params = llama_model_default_params();
    // remote devices take the offloaded layers (with the local GPUs, if any, after them)
    std::vector<ggml_backend_dev_t> devices;
    if (!rpc_servers.empty()) {
        for (const std::string & endpoint : rpc_servers) {
            for (ggml_backend_dev_t dev : rpc_devices(endpoint)) {
                devices.push_back(dev);
            }
        }
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            const auto type = ggml_backend_dev_type(dev);
            if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
                devices.push_back(dev);
            }
        }
        devices.push_back(nullptr);
        params.devices = devices.data();
    }
    params.n_gpu_layers = n_gpu_layers;
    params.main_gpu     = main_gpu;
    if (split_mode >= 0) {
        params.split_mode = (llama_split_mode) split_mode;
    }
    std::vector<float> split(std::max<size_t>(llama_max_devices(), tensor_split.size()), 0.0f);
    std::copy(tensor_split.begin(), tensor_split.end(), split.begin());
    if (!tensor_split.empty()) {
        if (tensor_split.size() > llama_max_devices()) {
            throw py::value_error("tensor_split has more entries than devices (" + std::to_string(llama_max_devices()) + ")");
        }
        params.tensor_split = split.data();
    }
    const std::vector<llama_model_kv_override> overrides = kv_overrides_from(kv_overrides);
    if (!overrides.empty()) {
        params.kv_overrides = overrides.data();
    }
    params.load_mode    = use_mmap && use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK
                        : use_mlock             ? LLAMA_LOAD_MODE_MLOCK
                        : use_mmap              ? LLAMA_LOAD_MODE_MMAP
                                                : LLAMA_LOAD_MODE_NONE;
    params.vocab_only   = vocab_only;
    params.use_extra_bufts = use_extra_bufts;
    llama_model * ptr = nullptr;
    char bad[512] = "";
    {
        py::gil_scoped_release release;
        llama_rewire_clear_abort();
        log_errors_clear();
        ptr = llama_model_load_from_file(path.c_str(), params);
        // values that would make a later decode abort inside ggml
        if (ptr != nullptr && llama_rewire_model_check(ptr, bad, sizeof(bad)) != LLAMA_REWIRE_OK) {
            llama_model_free(ptr);
            ptr = nullptr;
        }
    }
    if (ptr == nullptr) {
        // what llama.cpp said (an assert it hit on the file's contents, or the loader's error)
        std::string why = bad[0] ? bad : llama_rewire_last_abort() ? llama_rewire_last_abort() : log_first_error();
        const std::string marker = "error loading model: ";
        const size_t at = why.find(marker);
        if (at != std::string::npos) {
            why = why.substr(at + marker.size());
        }
        while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) {
            why.pop_back();
        }
        throw model_load_error("failed to load model from file: " + path + (why.empty() ? "" : ": " + why));
    }
    auto out = std::make_shared<model>(ptr);
    out->rpc_endpoints = rpc_servers;
    return out;
}

static py::object model_meta(const model & self, const std::string & key) {
    std::vector<char> buf(256);
    int32_t n = llama_model_meta_val_str(self.get(), key.c_str(), buf.data(), buf.size());
    if (n < 0) {
        return py::none();
    }
    if ((size_t) n >= buf.size()) {
        buf.resize(n + 1);
        n = llama_model_meta_val_str(self.get(), key.c_str(), buf.data(), buf.size());
    }
    return py::str(std::string(buf.data(), n));
}

static py::dict model_metadata(const model & self) {
    py::dict out;
    const int32_t count = llama_model_meta_count(self.get());
    std::vector<char> key(256), val(256);
    for (int32_t i = 0; i < count; ++i) {
        int32_t nk = llama_model_meta_key_by_index(self.get(), i, key.data(), key.size());
        if (nk < 0) {
            continue;
        }
        if ((size_t) nk >= key.size()) {
            key.resize(nk + 1);
            nk = llama_model_meta_key_by_index(self.get(), i, key.data(), key.size());
        }
        int32_t nv = llama_model_meta_val_str_by_index(self.get(), i, val.data(), val.size());
        if (nv < 0) {
            continue;
        }
        if ((size_t) nv >= val.size()) {
            val.resize(nv + 1);
            nv = llama_model_meta_val_str_by_index(self.get(), i, val.data(), val.size());
        }
        out[py::str(std::string(key.data(), nk))] = py::str(std::string(val.data(), nv));
    }
    return out;
}

static std::vector<llama_token> model_tokenize(const model & self, const py::bytes & text, bool add_special,
                                               bool parse_special) {
    const std::string s = text;
    const llama_vocab * vocab = self.vocab();
    std::vector<llama_token> tokens(s.size() + 2);
    int32_t n = 0;
    {
        py::gil_scoped_release release;
        n = llama_tokenize(vocab, s.data(), (int32_t) s.size(), tokens.data(), (int32_t) tokens.size(),
                           add_special, parse_special);
        if (n < 0) {
            tokens.resize(-n);
            n = llama_tokenize(vocab, s.data(), (int32_t) s.size(), tokens.data(), (int32_t) tokens.size(),
                               add_special, parse_special);
        }
    }
    if (n < 0) {
        throw std::runtime_error("tokenization failed");
    }
    tokens.resize(n);
    return tokens;
}

static void check_token(const model & self, llama_token token) {
    const int32_t n_vocab = llama_vocab_n_tokens(self.vocab());
    if (token < 0 || token >= n_vocab) {
        throw py::value_error("token id " + std::to_string(token) + " is out of range [0, " +
                              std::to_string(n_vocab) + ")");
    }
}

static py::bytes model_token_to_piece(const model & self, llama_token token, bool special) {
    check_token(self, token);
    std::vector<char> buf(64);
    int32_t n = llama_token_to_piece(self.vocab(), token, buf.data(), (int32_t) buf.size(), 0, special);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(self.vocab(), token, buf.data(), (int32_t) buf.size(), 0, special);
    }
    return py::bytes(buf.data(), n < 0 ? 0 : n);
}

static py::bytes model_detokenize(const model & self, const std::vector<llama_token> & tokens, bool remove_special,
                                  bool unparse_special) {
    for (llama_token t : tokens) {
        check_token(self, t);
    }
    std::vector<char> buf(tokens.size() * 8 + 16);
    int32_t n = llama_detokenize(self.vocab(), tokens.data(), (int32_t) tokens.size(), buf.data(),
                                 (int32_t) buf.size(), remove_special, unparse_special);
    if (n < 0) {
        buf.resize(-n);
        n = llama_detokenize(self.vocab(), tokens.data(), (int32_t) tokens.size(), buf.data(),
                             (int32_t) buf.size(), remove_special, unparse_special);
    }
    return py::bytes(buf.data(), n < 0 ? 0 : n);
}

static py::dict model_buffers(const model & self) {
    py::dict out;
    const int32_t n = llama_rewire_model_n_buffers(self.get());
    for (int32_t i = 0; i < n; ++i) {
        const char * name = nullptr;
        size_t size = 0;
        if (llama_rewire_model_buffer(self.get(), i, &name, &size) == LLAMA_REWIRE_OK && name != nullptr) {
            py::str key(name);
            const size_t before = out.contains(key) ? out[key].cast<size_t>() : 0;
            out[key] = before + size;
        }
    }
    return out;
}

static std::string model_desc(const model & self) {
    char buf[256];
    const int32_t n = llama_model_desc(self.get(), buf, sizeof(buf));
    return std::string(buf, n < 0 ? 0 : std::min<size_t>(n, sizeof(buf) - 1));
}

void bind_model(py::module_ & m) {
    py::class_<model, std::shared_ptr<model>>(m, "Model", "A loaded GGUF model (llama_model).")
        .def(py::init(&model_load), py::arg("path"), py::arg("n_gpu_layers") = 0, py::arg("use_mmap") = true,
             py::arg("use_mlock") = false, py::arg("vocab_only") = false, py::arg("main_gpu") = 0,
             py::arg("split_mode") = -1, py::arg("tensor_split") = std::vector<float>(),
             py::arg("kv_overrides") = py::dict(), py::arg("use_extra_bufts") = true,
             py::arg("rpc_servers") = std::vector<std::string>())
        .def("close", &model::close, "Free the model now; later calls raise.")
        .def_property_readonly("closed", &model::closed)
        // the llama_model * for the ctypes C API (llama_rewire.llama_cpp); ctypes reads _as_parameter_, so
        // the object itself can be passed as a llama_model_p, and `model` is llama-cpp-python's name for it
        .def_property_readonly("ptr", [](const model & s) { return reinterpret_cast<uintptr_t>(s.get()); },
                               "The address of the llama_model (raises once closed).")
        .def_property_readonly("_as_parameter_", [](const model & s) { return reinterpret_cast<uintptr_t>(s.get()); })
        .def_property_readonly("model", [](const model & s) { return reinterpret_cast<uintptr_t>(s.get()); })
        .def("n_layer", [](const model & s) { return llama_model_n_layer(s.get()); })
        .def("n_embd", [](const model & s) { return llama_model_n_embd(s.get()); })
        .def("n_ctx_train", [](const model & s) { return llama_model_n_ctx_train(s.get()); })
        .def("n_vocab", [](const model & s) { return llama_vocab_n_tokens(s.vocab()); })
        .def("n_params", [](const model & s) { return llama_model_n_params(s.get()); })
        .def("size", [](const model & s) { return llama_model_size(s.get()); })
        .def("desc", &model_desc)
        .def("buffers", &model_buffers, "Bytes of weights per buffer type name (CPU, CPU_REPACK, AMX, ...).")
        .def("meta", &model_meta, py::arg("key"), "A metadata value as a string, or None.")
        .def("metadata", &model_metadata, "All metadata as a dict of strings.")
        .def("chat_template", [](const model & s) -> py::object {
            const char * t = llama_model_chat_template(s.get(), nullptr);
            return t ? py::object(py::str(t)) : py::object(py::none());
        })
        .def("token_bos", [](const model & s) { return llama_vocab_bos(s.vocab()); })
        .def("token_eos", [](const model & s) { return llama_vocab_eos(s.vocab()); })
        .def("token_nl", [](const model & s) { return llama_vocab_nl(s.vocab()); })
        .def("add_bos", [](const model & s) { return llama_vocab_get_add_bos(s.vocab()); })
        .def("vocab_type", [](const model & s) { return (int) llama_vocab_type(s.vocab()); })
        .def("n_cls_out", [](const model & s) { return llama_model_n_cls_out(s.get()); })
        .def("has_encoder", [](const model & s) { return llama_model_has_encoder(s.get()); })
        .def("has_decoder", [](const model & s) { return llama_model_has_decoder(s.get()); })
        .def("n_swa", [](const model & s) { return llama_model_n_swa(s.get()); })
        .def("is_recurrent", [](const model & s) { return llama_model_is_recurrent(s.get()); },
             "Whether the memory is recurrent state only (Mamba, RWKV): no partial rollback.")
        .def("is_hybrid", [](const model & s) { return llama_model_is_hybrid(s.get()); },
             "Whether the memory mixes attention layers with recurrent ones (Jamba, Falcon-H1, ...).")
        .def("n_embd_out", [](const model & s) { return llama_model_n_embd_out(s.get()); })
        .def("token_text", [](const model & s, llama_token t) {
            check_token(s, t);
            return py::bytes(llama_vocab_get_text(s.vocab(), t));
        }, py::arg("token"))
        .def("token_is_control", [](const model & s, llama_token t) {
            check_token(s, t);
            return llama_vocab_is_control(s.vocab(), t);
        }, py::arg("token"))
        .def("add_eos", [](const model & s) { return llama_vocab_get_add_eos(s.vocab()); })
        .def("is_eog", [](const model & s, llama_token t) { return llama_vocab_is_eog(s.vocab(), t); }, py::arg("token"))
        .def("tokenize", &model_tokenize, py::arg("text"), py::arg("add_special") = true,
             py::arg("parse_special") = false)
        .def("token_to_piece", &model_token_to_piece, py::arg("token"), py::arg("special") = false)
        .def("detokenize", &model_detokenize, py::arg("tokens"), py::arg("remove_special") = false,
             py::arg("unparse_special") = false);
}

} // namespace rewire
