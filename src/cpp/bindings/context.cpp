// Context: decoding a batch of one sequence, logits as numpy, the KV cache.
#include "core.h"
#include "observe.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <optional>
#include <cstring>
#include <iterator>
#include <thread>
#include <vector>

namespace rewire {

// While a context is created, an assert in ggml's C code (graph building on a model whose file lacks a
// tensor the architecture needs) throws instead of aborting: llama_init_from_model catches it and fails.
[[noreturn]] static void abort_as_exception(const char * message) {
    throw std::runtime_error(message ? message : "ggml abort");
}

class context {
public:
    context(std::shared_ptr<model> mdl, llama_context_params params, std::unique_ptr<ffn_observer> observer)
        : model_(std::move(mdl)), observer_(std::move(observer)) {
        llama_model * m = model_->get();
        if (observer_) {
            params.cb_eval           = ffn_observer::callback;
            params.cb_eval_user_data = observer_.get();
        }
        {
            py::gil_scoped_release release;
            llama_rewire_clear_abort();
            log_errors_clear();
            ggml_abort_callback_t previous = ggml_set_abort_callback(abort_as_exception);
            ptr_ = llama_init_from_model(m, params);
            ggml_set_abort_callback(previous);
        }
        if (ptr_ == nullptr) {
            const char * why = llama_rewire_last_abort();
            std::string text = why ? why : log_first_error();
            while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
                text.pop_back();
            }
            throw std::runtime_error("failed to create a llama_context" + (text.empty() ? std::string() : ": " + text));
        }
        attach_threadpool(std::max(params.n_threads, params.n_threads_batch));
        batch_ = llama_batch_init((int32_t) llama_n_batch(ptr_), 0, (int32_t) llama_n_seq_max(ptr_));
        model_->context_opened();
    }
    ~context() { close(); }
    context(const context &) = delete;
    context & operator=(const context &) = delete;

    void close() {
        if (ptr_) {
            llama_batch_free(batch_);
            llama_free(ptr_);
            ptr_ = nullptr;
            if (threadpool_) {
                threadpool_free_(threadpool_);
                threadpool_ = nullptr;
            }
            for (llama_adapter_lora * a : loras_) {
                llama_adapter_lora_free(a);
            }
            loras_.clear();
            model_->context_closed();
        }
    }
    bool closed() const { return ptr_ == nullptr; }
    llama_context * get() const {
        if (!ptr_) {
            throw closed_error("the context is closed");
        }
        if (!lost_.empty()) {
            throw rpc_lost_error(lost_);
        }
        return ptr_;
    }
    const std::shared_ptr<model> & get_model() const { return model_; }

    // Decode tokens of sequence 0 at positions pos0, pos0+1, ... Returns the logits of every token
    // ([n, n_vocab]) when all_logits, else of the last one ([1, n_vocab]); None when not copy (they stay
    // in the context: logits_ith, or a sampler, reads them).
    py::object decode(const std::vector<llama_token> & tokens, int32_t pos0, bool all_logits, bool copy) {
        llama_context * ctx = get();
        const int32_t n = (int32_t) tokens.size();
        const int32_t n_batch = (int32_t) llama_n_batch(ctx);
        const int32_t n_vocab = llama_vocab_n_tokens(model_->vocab());
        if (n == 0) {
            throw py::value_error("decode: no tokens");
        }
        if (n > n_batch) {
            throw py::value_error("decode: " + std::to_string(n) + " tokens exceed n_batch = " + std::to_string(n_batch));
        }
        if (pos0 < 0 || (int64_t) pos0 + n > (int64_t) llama_n_ctx(ctx)) {
            throw py::value_error("decode: positions [" + std::to_string(pos0) + ", " + std::to_string(pos0 + n) +
                                  ") exceed the context window of " + std::to_string(llama_n_ctx(ctx)) + " tokens");
        }
        for (llama_token t : tokens) {
            if (t < 0 || t >= n_vocab) {
                throw py::value_error("decode: token id " + std::to_string(t) + " is out of range [0, " +
                                      std::to_string(n_vocab) + ")");
            }
        }
        batch_.n_tokens = n;
        for (int32_t i = 0; i < n; ++i) {
            batch_.token[i]     = tokens[i];
            batch_.pos[i]       = pos0 + i;
            batch_.n_seq_id[i]  = 1;
            batch_.seq_id[i][0] = 0;
            batch_.logits[i]    = all_logits || i == n - 1;
        }
        int32_t rc = 0;
        {
            py::gil_scoped_release release;
            rc = llama_decode(ctx, batch_);
            // wait for the backend as llama-bench does after every decode: the logits are read next
            // anyway, and llama.cpp books a decode's time and tokens (perf) when it synchronizes
            llama_synchronize(ctx);
        }
        check_remote();
        check_rc(rc);
        if (!copy) {
            return py::none();
        }
        const int32_t n_out = all_logits ? n : 1;
        py::array_t<float> out({(py::ssize_t) n_out, (py::ssize_t) n_vocab});
        float * dst = out.mutable_data();
        for (int32_t i = 0; i < n_out; ++i) {
            const float * row = llama_get_logits_ith(ctx, all_logits ? i : n - 1);
            if (row == nullptr) {
                throw decode_error("no logits for output " + std::to_string(i));
            }
            std::memcpy(dst + (size_t) i * n_vocab, row, sizeof(float) * n_vocab);
        }
        return out;
    }

    // Decode a batch of several sequences: token i of sequence seq[i] at position pos[i]. Without
    // `outputs` every token is an output (embeddings of each sequence, or of each token, are then read
    // with embeddings_*); with it, token i is an output where outputs[i] is true (its logits are then
    // read, or sampled, by its batch index i).
    void decode_batch(const std::vector<llama_token> & tokens, const std::vector<int32_t> & pos,
                      const std::vector<int32_t> & seq, const std::optional<std::vector<bool>> & outputs) {
        llama_context * ctx = get();
        const int32_t n = (int32_t) tokens.size();
        const int32_t n_vocab = llama_vocab_n_tokens(model_->vocab());
        if (n == 0 || pos.size() != tokens.size() || seq.size() != tokens.size() ||
            (outputs && outputs->size() != tokens.size())) {
            throw py::value_error("decode_batch: tokens, pos, seq (and outputs) must be non-empty and of equal length");
        }
        if (n > (int32_t) llama_n_batch(ctx)) {
            throw py::value_error("decode_batch: " + std::to_string(n) + " tokens exceed n_batch = " +
                                  std::to_string(llama_n_batch(ctx)));
        }
        for (int32_t i = 0; i < n; ++i) {
            if (tokens[i] < 0 || tokens[i] >= n_vocab) {
                throw py::value_error("decode_batch: token id " + std::to_string(tokens[i]) + " is out of range");
            }
            if (seq[i] < 0 || seq[i] >= (int32_t) llama_n_seq_max(ctx)) {
                throw py::value_error("decode_batch: sequence id " + std::to_string(seq[i]) + " is out of range [0, " +
                                      std::to_string(llama_n_seq_max(ctx)) + ")");
            }
            if (pos[i] < 0 || pos[i] >= (int32_t) llama_n_ctx(ctx)) {
                throw py::value_error("decode_batch: position " + std::to_string(pos[i]) + " is out of range");
            }
        }
        batch_.n_tokens = n;
        for (int32_t i = 0; i < n; ++i) {
            batch_.token[i]     = tokens[i];
            batch_.pos[i]       = pos[i];
            batch_.n_seq_id[i]  = 1;
            batch_.seq_id[i][0] = seq[i];
            batch_.logits[i]    = outputs ? (*outputs)[i] : true;
        }
        int32_t rc = 0;
        {
            py::gil_scoped_release release;
            rc = llama_decode(ctx, batch_);
            llama_synchronize(ctx);
        }
        check_remote();
        check_rc(rc);
    }

    // The logits of output i of the last decode (-1: the last output), copied.
    py::array_t<float> logits_ith(int32_t i) const {
        const float * row = llama_get_logits_ith(get(), i);
        if (row == nullptr) {
            throw py::value_error("no logits for output " + std::to_string(i) + " of the last decode");
        }
        return copy_row(row, llama_vocab_n_tokens(model_->vocab()));
    }

    // The pooled embedding of a sequence of the last decode (pooling type other than none).
    py::array_t<float> embeddings_seq(int32_t seq) const {
        const float * row = llama_get_embeddings_seq(get(), seq);
        if (row == nullptr) {
            throw py::value_error("no pooled embedding for sequence " + std::to_string(seq));
        }
        return copy_row(row, n_embd_out());
    }

    // The embedding of output i of the last decode (pooling type none).
    py::array_t<float> embeddings_ith(int32_t i) const {
        const float * row = llama_get_embeddings_ith(get(), i);
        if (row == nullptr) {
            throw py::value_error("no embedding for output " + std::to_string(i));
        }
        return copy_row(row, n_embd_out());
    }

    // Remove positions [p0, p1) of a sequence (-1: all) from the memory (p1 < 0: to the end).
    bool memory_seq_rm(int32_t p0, int32_t p1, int32_t seq) {
        return llama_memory_seq_rm(llama_get_memory(get()), seq, p0, p1);
    }

    // The whole state (KV cache, logits, RNG) as bytes, and back.
    py::bytes state_get() const {
        llama_context * ctx = get();
        std::string buf;
        {
            py::gil_scoped_release release;
            buf.resize(llama_state_get_size(ctx));
            const size_t n = llama_state_get_data(ctx, (uint8_t *) buf.data(), buf.size());
            buf.resize(n);
        }
        return py::bytes(buf);
    }

    void state_set(const py::bytes & data) {
        llama_context * ctx = get();
        const std::string buf = data;
        size_t n = 0;
        {
            py::gil_scoped_release release;
            n = llama_state_set_data(ctx, (const uint8_t *) buf.data(), buf.size());
        }
        if (n == 0 || n != buf.size()) {
            throw py::value_error("the state does not fit this context (another model or context size, or "
                                  "truncated data)");
        }
    }

    // Load a LoRA adapter file and apply it with a scale (kept until the context is closed).
    void lora_add(const std::string & path, float scale) {
        llama_context * ctx = get();
        llama_adapter_lora * a = nullptr;
        {
            py::gil_scoped_release release;
            a = llama_adapter_lora_init(model_->get(), path.c_str());
        }
        if (a == nullptr) {
            throw model_load_error("failed to load the LoRA adapter: " + path);
        }
        loras_.push_back(a);
        lora_scales_.push_back(scale);
        if (llama_set_adapters_lora(ctx, loras_.data(), loras_.size(), lora_scales_.data()) != 0) {
            throw std::runtime_error("failed to apply the LoRA adapter: " + path);
        }
    }

    void memory_clear() { llama_memory_clear(llama_get_memory(get()), true); }

    ffn_observer & observer() const {
        get();
        if (!observer_) {
            throw std::runtime_error("this context does not observe FFN activations (create it with observe_ffn=True)");
        }
        return *observer_;
    }

    // the statistics of one kind (0: ffn_down input, 1: overridden activation) as numpy arrays
    py::dict ffn_stats(int kind) const {
        if (kind < 0 || kind >= ffn_observer::N_KINDS) {
            throw py::value_error("kind must be 0 (ffn_down input), 1 (activation) or 2 (before threshold)");
        }
        const ffn_observer & obs = observer();
        const std::vector<act_stats> stats = obs.snapshot(kind);
        const py::ssize_t n_layer = (py::ssize_t) stats.size();
        const py::ssize_t n_hist  = obs.n_bins() + 1;
        py::array_t<uint64_t> count(n_layer), n_zero(n_layer), n_small(n_layer);
        py::array_t<double> sum(n_layer), sumsq(n_layer);
        py::array_t<uint64_t> hist({n_layer, n_hist});
        for (py::ssize_t il = 0; il < n_layer; ++il) {
            const act_stats & s = stats[il];
            count.mutable_at(il)   = s.count;
            n_zero.mutable_at(il)  = s.n_zero;
            n_small.mutable_at(il) = s.n_small;
            sum.mutable_at(il)     = s.sum;
            sumsq.mutable_at(il)   = s.sumsq;
            std::copy(s.hist.begin(), s.hist.end(), hist.mutable_data(il, 0));
        }
        py::dict d;
        d["count"] = count;
        d["sum"] = sum;
        d["sumsq"] = sumsq;
        d["n_zero"] = n_zero;
        d["n_small"] = n_small;
        d["hist"] = hist;
        d["eps"] = obs.eps();
        d["log10_min"] = obs.log10_min();
        d["log10_max"] = obs.log10_max();
        return d;
    }

private:
    // A persistent CPU thread pool (as llama-bench uses): without one, ggml starts and joins its worker
    // threads on every decode, which costs several percent of the generation speed.
    void attach_threadpool(int32_t n_threads) {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        ggml_backend_reg_t reg = cpu ? ggml_backend_dev_backend_reg(cpu) : nullptr;
        if (reg == nullptr) {
            return;
        }
        auto * tp_new  = (decltype(ggml_threadpool_new) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
        threadpool_free_ = (decltype(ggml_threadpool_free) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
        if (tp_new == nullptr || threadpool_free_ == nullptr) {
            return;
        }
        ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
        threadpool_ = tp_new(&tpp);
        if (threadpool_) {
            llama_attach_threadpool(ptr_, threadpool_, nullptr);
        }
    }

    // After a decode: an RPC server the model runs on that went away makes this context unusable (its
    // remote state is gone); every later call raises.
    void check_remote() {
        if (model_->rpc_endpoints.empty()) {
            return;
        }
        const std::string endpoint = model_->lost_rpc_endpoint();
        if (!endpoint.empty()) {
            lost_ = "the connection to RPC server " + endpoint +
                    " was lost (the server stopped, or the network failed): this Llama cannot be used any more; "
                    "close it and load the model again";
            throw rpc_lost_error(lost_);
        }
    }

    static void check_rc(int32_t rc) {
        if (rc != 0) {
            std::string why = rc == 1  ? "no KV cache slot for the batch (context full)"
                            : rc == 2  ? "aborted"
                            : rc == -1 ? "invalid batch"
                                       : "compute error";
            throw decode_error("llama_decode failed with code " + std::to_string(rc) + ": " + why);
        }
    }

    int32_t n_embd_out() const { return llama_model_n_embd_out(model_->get()); }

    static py::array_t<float> copy_row(const float * row, int32_t n) {
        py::array_t<float> out(n);
        std::memcpy(out.mutable_data(), row, sizeof(float) * n);
        return out;
    }

    std::shared_ptr<model> model_;
    ggml_threadpool * threadpool_ = nullptr;
    decltype(ggml_threadpool_free) * threadpool_free_ = nullptr;
    std::vector<llama_adapter_lora *> loras_;
    std::vector<float> lora_scales_;
    std::unique_ptr<ffn_observer> observer_;
    llama_context * ptr_ = nullptr;
    std::string lost_;  // why the context cannot be used any more (an RPC server went away), or ""
    llama_batch batch_{};
};

// v as a T, or a TypeError naming the parameter (pybind11's own cast error names neither)
template <typename T> static T param_as(const std::string & key, py::handle v, const char * what) {
    try {
        return v.cast<T>();
    } catch (const py::cast_error &) {
        throw py::type_error(key + " must be " + what + ", got " + std::string(py::repr(v)));
    }
}

// An enum value given as an int; llama.cpp aborts on values outside the enum.
static int enum_in_range(const std::string & key, py::handle v, int lo, int hi) {
    const int x = param_as<int>(key, v, "an integer");
    if (x < lo || x > hi) {
        throw py::value_error(key + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                              std::to_string(x));
    }
    return x;
}

// Optional context parameters by llama_context_params field name (rope, pooling and attention
// settings, op offload, performance timings).
static void set_extra_params(llama_context_params & p, const py::dict & extra) {
    for (const auto & item : extra) {
        const std::string key = py::str(item.first);
        const py::handle v = item.second;
        if (key == "rope_scaling_type") {
            p.rope_scaling_type = (llama_rope_scaling_type) enum_in_range(key, v, -1, LLAMA_ROPE_SCALING_TYPE_MAX_VALUE);
        } else if (key == "pooling_type") {
            p.pooling_type = (enum llama_pooling_type) enum_in_range(key, v, -1, LLAMA_POOLING_TYPE_RANK);
        } else if (key == "attention_type") {
            p.attention_type = (llama_attention_type) enum_in_range(key, v, -1, LLAMA_ATTENTION_TYPE_NON_CAUSAL);
        } else if (key == "rope_freq_base") {
            p.rope_freq_base = param_as<float>(key, v, "a number");
        } else if (key == "rope_freq_scale") {
            p.rope_freq_scale = param_as<float>(key, v, "a number");
        } else if (key == "yarn_ext_factor") {
            p.yarn_ext_factor = param_as<float>(key, v, "a number");
        } else if (key == "yarn_attn_factor") {
            p.yarn_attn_factor = param_as<float>(key, v, "a number");
        } else if (key == "yarn_beta_fast") {
            p.yarn_beta_fast = param_as<float>(key, v, "a number");
        } else if (key == "yarn_beta_slow") {
            p.yarn_beta_slow = param_as<float>(key, v, "a number");
        } else if (key == "yarn_orig_ctx") {
            p.yarn_orig_ctx = param_as<uint32_t>(key, v, "a non-negative integer");
        } else if (key == "swa_full") {
            p.swa_full = param_as<bool>(key, v, "a bool");
        } else if (key == "kv_unified") {
            p.kv_unified = param_as<bool>(key, v, "a bool");
        } else if (key == "op_offload") {
            p.op_offload = param_as<bool>(key, v, "a bool");
        } else if (key == "no_perf") {
            p.no_perf = param_as<bool>(key, v, "a bool");
        } else {
            throw py::value_error("unknown context parameter: " + key);
        }
    }
}

static std::unique_ptr<context> context_new(std::shared_ptr<model> mdl, uint32_t n_ctx, uint32_t n_batch,
                                            uint32_t n_ubatch, int32_t n_threads, int32_t n_threads_batch,
                                            int type_k, int type_v, int flash_attn, bool embeddings,
                                            bool offload_kqv, bool observe_ffn, float eps, int32_t n_bins,
                                            float log10_min, float log10_max, uint32_t n_seq_max,
                                            const py::dict & extra) {
    if (!mdl) {
        throw py::value_error("model is None");
    }
    llama_context_params p = llama_context_default_params();
    const int32_t hw = (int32_t) std::max(1u, std::thread::hardware_concurrency());
    p.n_ctx           = n_ctx;
    p.n_batch         = n_batch;
    p.n_ubatch        = n_ubatch;
    p.n_seq_max       = std::max(1u, n_seq_max);
    p.n_threads       = n_threads > 0 ? n_threads : hw;
    p.n_threads_batch = n_threads_batch > 0 ? n_threads_batch : p.n_threads;
    if (flash_attn < -1 || flash_attn > 1) {
        throw py::value_error("flash_attn must be -1 (auto), 0 or 1");
    }
    for (int t : {type_k, type_v}) {
        // the cache types llama.cpp's tools accept (--cache-type-k/-v)
        static const int ok[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
                                 GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1};
        if (t >= 0 && std::find(std::begin(ok), std::end(ok), t) == std::end(ok)) {
            throw py::value_error("type_k / type_v: unsupported KV cache type " + std::to_string(t));
        }
    }
    p.flash_attn_type = (llama_flash_attn_type) flash_attn;
    p.embeddings      = embeddings;
    p.offload_kqv     = offload_kqv;
    if (type_k >= 0) {
        p.type_k = (ggml_type) type_k;
    }
    if (type_v >= 0) {
        p.type_v = (ggml_type) type_v;
    }
    set_extra_params(p, extra);
    std::unique_ptr<ffn_observer> observer;
    if (observe_ffn) {
        if (!(eps >= 0.0f) || n_bins < 1 || n_bins > 100000 || !(log10_min < log10_max)) {
            throw py::value_error("bad FFN statistics settings (eps >= 0, 1 <= n_bins <= 100000, log10_min < log10_max)");
        }
        observer = std::make_unique<ffn_observer>(llama_model_n_layer(mdl->get()), eps, n_bins, log10_min, log10_max);
    }
    return std::make_unique<context>(std::move(mdl), p, std::move(observer));
}

llama_context * context_ptr(py::handle ctx) {
    return ctx.cast<context &>().get();
}

void bind_context(py::module_ & m) {
    py::class_<context>(m, "Context", "An inference context (llama_context) over a Model.")
        .def(py::init(&context_new), py::arg("model"), py::arg("n_ctx") = 512, py::arg("n_batch") = 512,
             py::arg("n_ubatch") = 512, py::arg("n_threads") = 0, py::arg("n_threads_batch") = 0,
             py::arg("type_k") = -1, py::arg("type_v") = -1, py::arg("flash_attn") = 0,
             py::arg("embeddings") = false, py::arg("offload_kqv") = true, py::arg("observe_ffn") = false,
             py::arg("eps") = 1e-3f, py::arg("n_bins") = 400, py::arg("log10_min") = -8.0f,
             py::arg("log10_max") = 4.0f, py::arg("n_seq_max") = 1, py::arg("extra") = py::dict())
        .def("close", &context::close, "Free the context now; later calls raise.")
        .def_property_readonly("closed", &context::closed)
        // the llama_context * for the ctypes C API (llama_rewire.llama_cpp), as in model.cpp; `ctx` is
        // llama-cpp-python's name for it
        .def_property_readonly("ptr", [](const context & c) { return reinterpret_cast<uintptr_t>(c.get()); },
                               "The address of the llama_context (raises once closed).")
        .def_property_readonly("_as_parameter_", [](const context & c) { return reinterpret_cast<uintptr_t>(c.get()); })
        .def_property_readonly("ctx", [](const context & c) { return reinterpret_cast<uintptr_t>(c.get()); })
        .def_property_readonly("model", &context::get_model)
        .def("n_ctx", [](const context & c) { return llama_n_ctx(c.get()); })
        .def("n_batch", [](const context & c) { return llama_n_batch(c.get()); })
        .def("n_ubatch", [](const context & c) { return llama_n_ubatch(c.get()); })
        .def("set_n_threads", [](const context & c, int32_t n, int32_t nb) { llama_set_n_threads(c.get(), n, nb); },
             py::arg("n_threads"), py::arg("n_threads_batch"))
        .def("n_seq_max", [](const context & c) { return llama_n_seq_max(c.get()); })
        .def("pooling_type", [](const context & c) { return (int) llama_pooling_type(c.get()); })
        .def("decode", &context::decode, py::arg("tokens"), py::arg("pos0"), py::arg("all_logits") = false,
             py::arg("copy") = true)
        .def("decode_batch", &context::decode_batch, py::arg("tokens"), py::arg("pos"), py::arg("seq"),
             py::arg("outputs") = py::none())
        .def("logits_ith", &context::logits_ith, py::arg("i") = -1)
        .def("embeddings_seq", &context::embeddings_seq, py::arg("seq"))
        .def("embeddings_ith", &context::embeddings_ith, py::arg("i"))
        .def("memory_seq_rm", &context::memory_seq_rm, py::arg("p0"), py::arg("p1") = -1, py::arg("seq") = 0)
        .def("state_get", &context::state_get)
        .def("state_set", &context::state_set, py::arg("data"))
        .def("lora_add", &context::lora_add, py::arg("path"), py::arg("scale") = 1.0f)
        .def("memory_clear", &context::memory_clear)
        .def("memory_seq_pos_min", [](const context & c, int32_t seq) {
            return llama_memory_seq_pos_min(llama_get_memory(c.get()), seq);
        }, py::arg("seq") = 0, "The smallest position the memory holds for a sequence (-1: none).")
        .def("ffn_stats", &context::ffn_stats, py::arg("kind") = 0,
             "Per-layer statistics of kind 0 (ffn_down input) or 1 (overridden activation) since the last reset.")
        .def("perf", [](const context & c) {
                const llama_perf_context_data d = llama_perf_context(c.get());
                py::dict out;
                out["t_load_ms"]   = d.t_load_ms;
                out["t_p_eval_ms"] = d.t_p_eval_ms;
                out["t_eval_ms"]   = d.t_eval_ms;
                out["n_p_eval"]    = d.n_p_eval;
                out["n_eval"]      = d.n_eval;
                out["n_reused"]    = d.n_reused;
                return out;
            }, "llama.cpp's timings: prompt and generation time (ms) and tokens, and how many decodes reused "
               "the previous compute graph, since the context was made or perf_reset.")
        .def("perf_reset", [](const context & c) { llama_perf_context_reset(c.get()); })
        .def("ffn_stats_reset", [](const context & c) { c.observer().reset(); })
        .def("ffn_stats_enable", [](const context & c, bool on) { c.observer().set_enabled(on); }, py::arg("on"));
}

} // namespace rewire
