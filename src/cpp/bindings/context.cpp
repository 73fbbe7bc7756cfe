// Context: decoding a batch of one sequence, logits as numpy, the KV cache.
#include "core.h"
#include "observe.h"

#include <cstring>
#include <thread>
#include <vector>

namespace rewire {

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
            ptr_ = llama_init_from_model(m, params);
        }
        if (ptr_ == nullptr) {
            throw std::runtime_error("failed to create a llama_context (see the log above for the cause)");
        }
        batch_ = llama_batch_init((int32_t) llama_n_batch(ptr_), 0, 1);
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
            model_->context_closed();
        }
    }
    bool closed() const { return ptr_ == nullptr; }
    llama_context * get() const {
        if (!ptr_) {
            throw closed_error("the context is closed");
        }
        return ptr_;
    }
    const std::shared_ptr<model> & get_model() const { return model_; }

    // Decode tokens of sequence 0 at positions pos0, pos0+1, ... Returns the logits of every token
    // ([n, n_vocab]) when all_logits, else of the last one ([1, n_vocab]).
    py::array_t<float> decode(const std::vector<llama_token> & tokens, int32_t pos0, bool all_logits) {
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
        }
        if (rc != 0) {
            std::string why = rc == 1  ? "no KV cache slot for the batch (context full)"
                            : rc == 2  ? "aborted"
                            : rc == -1 ? "invalid batch"
                                       : "compute error";
            throw decode_error("llama_decode failed with code " + std::to_string(rc) + ": " + why);
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

    // Remove positions [p0, p1) of sequence 0 from the memory (p1 < 0: to the end).
    bool memory_seq_rm(int32_t p0, int32_t p1) {
        return llama_memory_seq_rm(llama_get_memory(get()), 0, p0, p1);
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
    std::shared_ptr<model> model_;
    std::unique_ptr<ffn_observer> observer_;
    llama_context * ptr_ = nullptr;
    llama_batch batch_{};
};

static std::unique_ptr<context> context_new(std::shared_ptr<model> mdl, uint32_t n_ctx, uint32_t n_batch,
                                            uint32_t n_ubatch, int32_t n_threads, int32_t n_threads_batch,
                                            int type_k, int type_v, int flash_attn, bool embeddings,
                                            bool offload_kqv, bool observe_ffn, float eps, int32_t n_bins,
                                            float log10_min, float log10_max) {
    if (!mdl) {
        throw py::value_error("model is None");
    }
    llama_context_params p = llama_context_default_params();
    const int32_t hw = (int32_t) std::max(1u, std::thread::hardware_concurrency());
    p.n_ctx           = n_ctx;
    p.n_batch         = n_batch;
    p.n_ubatch        = n_ubatch;
    p.n_seq_max       = 1;
    p.n_threads       = n_threads > 0 ? n_threads : hw;
    p.n_threads_batch = n_threads_batch > 0 ? n_threads_batch : p.n_threads;
    p.flash_attn_type = (llama_flash_attn_type) flash_attn;
    p.embeddings      = embeddings;
    p.offload_kqv     = offload_kqv;
    if (type_k >= 0) {
        p.type_k = (ggml_type) type_k;
    }
    if (type_v >= 0) {
        p.type_v = (ggml_type) type_v;
    }
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
             py::arg("log10_max") = 4.0f)
        .def("close", &context::close, "Free the context now; later calls raise.")
        .def_property_readonly("closed", &context::closed)
        .def_property_readonly("model", &context::get_model)
        .def("n_ctx", [](const context & c) { return llama_n_ctx(c.get()); })
        .def("n_batch", [](const context & c) { return llama_n_batch(c.get()); })
        .def("n_ubatch", [](const context & c) { return llama_n_ubatch(c.get()); })
        .def("set_n_threads", [](const context & c, int32_t n, int32_t nb) { llama_set_n_threads(c.get(), n, nb); },
             py::arg("n_threads"), py::arg("n_threads_batch"))
        .def("decode", &context::decode, py::arg("tokens"), py::arg("pos0"), py::arg("all_logits") = false)
        .def("memory_seq_rm", &context::memory_seq_rm, py::arg("p0"), py::arg("p1") = -1)
        .def("memory_clear", &context::memory_clear)
        .def("ffn_stats", &context::ffn_stats, py::arg("kind") = 0,
             "Per-layer statistics of kind 0 (ffn_down input) or 1 (overridden activation) since the last reset.")
        .def("ffn_stats_reset", [](const context & c) { c.observer().reset(); })
        .def("ffn_stats_enable", [](const context & c, bool on) { c.observer().set_enabled(on); }, py::arg("on"));
}

} // namespace rewire
