// Sampler: llama.cpp's sampler chain plus an optional grammar, configured like llama-cpp-python's.
//
// Order: logit bias, repetition penalties, then either greedy (temperature <= 0), mirostat (1 or 2) or
// top-k, typical, top-p, min-p, temperature and a seeded draw. A grammar is checked against the token
// the chain picks; only when that token is not allowed is the grammar applied to every candidate and the
// chain run again (the same result as filtering first, at a fraction of the cost).
#include "core.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace rewire {

struct sampler_params {
    float    temperature      = 0.8f;
    int32_t  top_k            = 40;
    float    top_p            = 0.95f;
    float    min_p            = 0.05f;
    float    typical_p        = 1.0f;
    int32_t  min_keep         = 1;
    float    repeat_penalty   = 1.0f;
    float    frequency_penalty = 0.0f;
    float    presence_penalty = 0.0f;
    int32_t  penalty_last_n   = 64;
    int32_t  mirostat_mode    = 0;
    float    mirostat_tau     = 5.0f;
    float    mirostat_eta     = 0.1f;
    uint32_t seed             = 0xFFFFFFFFu;
};

// One field of the sampling parameters, by name; a value of the wrong type is a TypeError naming it
// (pybind's own message names neither the field nor the type it wanted).
template <typename T>
static T field(const py::object & params, const char * name) {
    py::object value = params.attr(name);
    try {
        return value.cast<T>();
    } catch (const py::cast_error &) {
        throw py::type_error(std::string("sampling parameters: ") + name + " has a value of the wrong type: " +
                             py::repr(value).cast<std::string>().substr(0, 80));
    }
}

// The longest trigger pattern of a lazy grammar (a regex: std::regex compiles it recursively).
static constexpr size_t max_trigger_pattern_bytes = 4096;

// Why llama.cpp refused to set up a grammar: the first error it logged on this thread since
// log_errors_clear() (the parser's own message), else that it does not parse.
static std::string grammar_refusal() {
    std::string first = log_first_error();
    while (!first.empty() && (first.back() == '\n' || first.back() == ' ')) {
        first.pop_back();
    }
    const std::string parser = "error parsing grammar: ";
    if (first.compare(0, parser.size(), parser) == 0) {
        return "the grammar does not parse: " + first.substr(parser.size());
    }
    if (first.rfind("grammar does not contain a '", 0) == 0) {
        return "the grammar has no 'root' rule";
    }
    if (first.empty() || first == "failed to parse grammar") {
        return "the grammar does not parse or has no 'root' rule";
    }
    return "the grammar is refused: " + first;
}

// The index of the first largest value (std::max_element's answer, for data without NaN), in one pass
// the compiler vectorizes: the maximum of each block of 64 in 16 independent lanes, then a scan of the
// one block that holds the largest. About 5x faster than max_element on a 262k vocabulary, where that
// was over 1% of a generated token's time.
static llama_token first_argmax(const float * x, int32_t n) {
    constexpr int32_t BLOCK = 64;
    constexpr int32_t LANES = 16;
    float best = -INFINITY;
    int32_t best_block = -1;
    const int32_t n_blocks = n / BLOCK;
    for (int32_t b = 0; b < n_blocks; ++b) {
        const float * p = x + (size_t) b * BLOCK;
        float lanes[LANES];
        for (int32_t j = 0; j < LANES; ++j) {
            lanes[j] = p[j];
        }
        for (int32_t i = LANES; i < BLOCK; i += LANES) {
            for (int32_t j = 0; j < LANES; ++j) {
                lanes[j] = p[i + j] > lanes[j] ? p[i + j] : lanes[j];
            }
        }
        float m = lanes[0];
        for (int32_t j = 1; j < LANES; ++j) {
            m = lanes[j] > m ? lanes[j] : m;
        }
        if (m > best) {  // strict: an earlier block keeps a tie
            best = m;
            best_block = b;
        }
    }
    int32_t idx = -1;
    if (best_block >= 0) {
        const float * p = x + (size_t) best_block * BLOCK;
        for (int32_t i = 0; i < BLOCK; ++i) {
            if (p[i] == best) {
                idx = best_block * BLOCK + i;
                break;
            }
        }
    }
    for (int32_t i = n_blocks * BLOCK; i < n; ++i) {
        if (x[i] > best) {
            best = x[i];
            idx = i;
        }
    }
    if (idx < 0) {  // nothing above -inf (all -inf, or NaN in the way): max_element decides
        idx = (int32_t) (std::max_element(x, x + n) - x);
    }
    return (llama_token) idx;
}

static void check_finite(const char * name, float v) {
    if (!std::isfinite(v)) {
        throw py::value_error(std::string(name) + " must be a finite number");
    }
}

class sampler {
public:
    sampler(std::shared_ptr<model> mdl, const sampler_params & p, const std::vector<std::pair<llama_token, float>> & logit_bias,
            const std::string & grammar, bool grammar_lazy, const std::vector<std::string> & trigger_patterns,
            const std::vector<llama_token> & trigger_tokens)
        : model_(std::move(mdl)) {
        const llama_vocab * vocab = model_->vocab();
        n_vocab_ = llama_vocab_n_tokens(vocab);
        validate(p, logit_bias);

        chain_ = llama_sampler_chain_init(llama_sampler_chain_default_params());
        if (!logit_bias.empty()) {
            std::vector<llama_logit_bias> bias;
            for (const auto & [tok, b] : logit_bias) {
                bias.push_back({tok, b});
            }
            add(llama_sampler_init_logit_bias(n_vocab_, (int32_t) bias.size(), bias.data()));
        }
        if (p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
            add(llama_sampler_init_penalties(n_vocab_, p.penalty_last_n, p.repeat_penalty, p.frequency_penalty,
                                             p.presence_penalty));
        }
        if (p.temperature <= 0.0f) {
            add(llama_sampler_init_greedy());
            // nothing before the greedy choice changes the logits: pick() can take the argmax directly
            argmax_only_ = logit_bias.empty() && llama_sampler_chain_n(chain_) == 1;
        } else if (p.mirostat_mode == 1) {
            add(llama_sampler_init_temp(p.temperature));
            add(llama_sampler_init_mirostat(n_vocab_, p.seed, p.mirostat_tau, p.mirostat_eta, 100));
        } else if (p.mirostat_mode == 2) {
            add(llama_sampler_init_temp(p.temperature));
            add(llama_sampler_init_mirostat_v2(p.seed, p.mirostat_tau, p.mirostat_eta));
        } else {
            const size_t keep = (size_t) std::max(1, p.min_keep);
            if (p.top_k > 0) {
                add(llama_sampler_init_top_k(p.top_k));
            }
            if (p.typical_p < 1.0f) {
                add(llama_sampler_init_typical(p.typical_p, keep));
            }
            if (p.top_p < 1.0f) {
                add(llama_sampler_init_top_p(p.top_p, keep));
            }
            if (p.min_p > 0.0f) {
                add(llama_sampler_init_min_p(p.min_p, keep));
            }
            add(llama_sampler_init_temp(p.temperature));
            add(llama_sampler_init_dist(p.seed));
        }

        if (!grammar.empty()) {
            std::vector<const char *> patterns;
            for (const auto & s : trigger_patterns) {
                // std::regex compiles a pattern by recursion: 100,000 characters overflow the stack
                if (s.size() > max_trigger_pattern_bytes) {
                    llama_sampler_free(chain_);
                    chain_ = nullptr;
                    throw grammar_error("a grammar trigger pattern is longer than " +
                                        std::to_string(max_trigger_pattern_bytes) + " bytes (" +
                                        std::to_string(s.size()) + ")");
                }
                patterns.push_back(s.c_str());
            }
            for (llama_token t : trigger_tokens) {
                if (t < 0 || t >= n_vocab_) {
                    llama_sampler_free(chain_);
                    chain_ = nullptr;
                    throw py::value_error("grammar trigger token " + std::to_string(t) + " is out of range");
                }
            }
            std::string why;
            {
                py::gil_scoped_release release;
                log_errors_clear();
                try {
                    grammar_ = grammar_lazy
                        ? llama_sampler_init_grammar_lazy_patterns(vocab, grammar.c_str(), "root", patterns.data(),
                                                                   patterns.size(), trigger_tokens.data(),
                                                                   trigger_tokens.size())
                        : llama_sampler_init_grammar(vocab, grammar.c_str(), "root");
                } catch (const std::exception & e) {  // e.g. a trigger pattern that is not a regex
                    grammar_ = nullptr;
                    why = std::string("bad grammar or trigger pattern: ") + e.what();
                }
            }
            if (grammar_ == nullptr) {
                llama_sampler_free(chain_);
                chain_ = nullptr;
                throw grammar_error(why.empty() ? grammar_refusal() : why);
            }
        }
    }
    ~sampler() {
        if (chain_) {
            llama_sampler_free(chain_);
        }
        if (grammar_) {
            llama_sampler_free(grammar_);
        }
    }
    sampler(const sampler &) = delete;
    sampler & operator=(const sampler &) = delete;

    // Sample from the logits of output idx of the last decode (-1: the last output), and accept it.
    llama_token sample(py::handle ctx, int32_t idx) {
        llama_context * c = context_ptr(ctx);
        llama_token t;
        {
            py::gil_scoped_release release;
            const float * logits = llama_get_logits_ith(c, idx);
            if (logits == nullptr) {
                t = LLAMA_TOKEN_NULL;
            } else {
                check_logits(logits, true);
                t = pick(logits);
            }
        }
        if (t == LLAMA_TOKEN_NULL) {
            throw py::value_error("no logits for output " + std::to_string(idx) + " of the last decode");
        }
        accept(t, true);
        return t;
    }

    // Sample from logits given by the caller (e.g. after Python logits processors), and accept it.
    llama_token sample_logits(const py::array_t<float, py::array::c_style | py::array::forcecast> & logits) {
        if (logits.ndim() != 1 || logits.shape(0) != n_vocab_) {
            throw py::value_error("logits must be a 1-D array of n_vocab = " + std::to_string(n_vocab_) + " floats");
        }
        const float * data = logits.data();
        llama_token t;
        {
            py::gil_scoped_release release;
            check_logits(data, false);
            t = pick(data);
        }
        accept(t, true);
        return t;
    }

    // Record a token: penalties see it; the grammar only when with_grammar (prompt tokens bypass it).
    void accept(llama_token token, bool with_grammar) {
        if (token < 0 || token >= n_vocab_) {
            throw py::value_error("token id " + std::to_string(token) + " is out of range");
        }
        llama_sampler_accept(chain_, token);
        if (grammar_ && with_grammar) {
            try {
                llama_sampler_accept(grammar_, token);
            } catch (const std::exception & e) {
                throw grammar_error(std::string("the grammar does not accept this token: ") + e.what());
            }
        }
    }

    // Record a token in the grammar only: text the prompt already holds (a tool-call grammar's
    // generation prompt), which the penalties must not see, as llama.cpp's common_sampler prefill.
    void accept_grammar(llama_token token) {
        if (token < 0 || token >= n_vocab_) {
            throw py::value_error("token id " + std::to_string(token) + " is out of range");
        }
        if (!grammar_) {
            return;
        }
        try {
            llama_sampler_accept(grammar_, token);
        } catch (const std::exception & e) {
            throw grammar_error(std::string("the grammar does not accept this token: ") + e.what());
        }
    }

    void reset() {
        llama_sampler_reset(chain_);
        if (grammar_) {
            llama_sampler_reset(grammar_);
        }
    }

    bool has_grammar() const { return grammar_ != nullptr; }

private:
    void add(llama_sampler * s) { llama_sampler_chain_add(chain_, s); }

    void validate(const sampler_params & p, const std::vector<std::pair<llama_token, float>> & logit_bias) const {
        check_finite("temperature", p.temperature);
        check_finite("top_p", p.top_p);
        check_finite("min_p", p.min_p);
        check_finite("typical_p", p.typical_p);
        check_finite("frequency_penalty", p.frequency_penalty);
        check_finite("presence_penalty", p.presence_penalty);
        check_finite("mirostat_tau", p.mirostat_tau);
        check_finite("mirostat_eta", p.mirostat_eta);
        if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) {
            throw py::value_error("repeat_penalty must be a finite number > 0");
        }
        if (p.penalty_last_n < -1) {
            throw py::value_error("penalty_last_n must be >= -1");
        }
        if (p.mirostat_mode < 0 || p.mirostat_mode > 2) {
            throw py::value_error("mirostat_mode must be 0, 1 or 2");
        }
        for (const auto & [tok, b] : logit_bias) {
            if (tok < 0 || tok >= n_vocab_) {
                throw py::value_error("logit_bias: token id " + std::to_string(tok) + " is out of range [0, " +
                                      std::to_string(n_vocab_) + ")");
            }
            if (std::isnan(b)) {
                throw py::value_error("logit_bias: a bias must not be NaN");
            }
        }
    }

    // The candidates are built only by a sampler that needs them: a greedy one never allocates them
    // (3 MB for a 262k vocabulary).
    void fill(const float * logits) {
        cur_.resize(n_vocab_);
        for (llama_token i = 0; i < n_vocab_; ++i) {
            cur_[i] = {i, logits[i], 0.0f};
        }
    }

    // A model's logits are finite; NaN or infinity means the computation overflowed (most often the
    // wiring or edits pushed the residual stream beyond float range), and sampling from them would give
    // an arbitrary token. Logits a caller processed may hold -inf (a banned token), not NaN or +inf.
    void check_logits(const float * logits, bool raw) const {
        for (int32_t i = 0; i < n_vocab_; ++i) {
            const float x = logits[i];
            if (std::isnan(x) || (std::isinf(x) && (raw || x > 0))) {
                throw non_finite_error(
                    std::string(raw ? "the model's logits are not finite (" : "the processed logits are not finite (") +
                    (std::isnan(x) ? "NaN" : x > 0 ? "+inf" : "-inf") + " for token " + std::to_string(i) +
                    (raw ? "): the computation overflowed; the wiring or edits (steering, scales, activations) "
                           "may push the residual stream beyond float range"
                         : "): a logits_processor returned NaN or +inf"));
            }
        }
    }

    // Runs without the GIL.
    llama_token pick(const float * logits) {
        if (argmax_only_ && grammar_ == nullptr) {
            // what the greedy sampler picks (the first largest logit), without building the candidates
            return first_argmax(logits, n_vocab_);
        }
        fill(logits);
        llama_token_data_array arr = {cur_.data(), cur_.size(), -1, false};
        llama_sampler_apply(chain_, &arr);
        llama_token t = arr.data[arr.selected].id;
        if (grammar_) {
            try {
                llama_token_data one = {t, 1.0f, 0.0f};
                llama_token_data_array single = {&one, 1, -1, false};
                llama_sampler_apply(grammar_, &single);
                if (std::isinf(single.data[0].logit) && single.data[0].logit < 0) {
                    fill(logits);
                    arr = {cur_.data(), cur_.size(), -1, false};
                    llama_sampler_apply(grammar_, &arr);
                    llama_sampler_apply(chain_, &arr);
                    t = arr.data[arr.selected].id;
                }
            } catch (const grammar_error &) {
                throw;
            } catch (const std::exception & e) {  // e.g. a grammar too ambiguous to follow (its stack bound)
                throw grammar_error(std::string("the grammar cannot be followed: ") + e.what());
            }
        }
        return t;
    }

    std::shared_ptr<model>         model_;
    llama_sampler *                chain_   = nullptr;
    llama_sampler *                grammar_ = nullptr;
    int32_t                        n_vocab_ = 0;
    bool                           argmax_only_ = false;
    std::vector<llama_token_data>  cur_;
};

// True where gbnf parses as a grammar with a "root" rule (token references need the model's vocab); a
// grammar that does not, or that parses but cannot be set up (llama.cpp's bounds on its parse stacks),
// raises GrammarError saying why.
static bool grammar_check(py::object mdl, const std::string & gbnf) {
    const llama_vocab * vocab = mdl.is_none() ? nullptr : mdl.cast<model &>().vocab();
    llama_sampler * s = nullptr;
    std::string why;
    {
        py::gil_scoped_release release;
        log_errors_clear();
        try {
            s = llama_sampler_init_grammar(vocab, gbnf.c_str(), "root");
        } catch (const std::exception & e) {
            why = e.what();
            s = nullptr;
        }
    }
    if (!why.empty()) {  // it parses, but cannot be followed (e.g. too ambiguous): say why
        throw grammar_error(why);
    }
    if (s == nullptr) {
        throw grammar_error(grammar_refusal());
    }
    llama_sampler_free(s);
    return true;
}

void bind_sampler(py::module_ & m) {
    py::class_<sampler>(m, "Sampler", "A llama.cpp sampler chain with an optional GBNF grammar.")
        .def(py::init([](std::shared_ptr<model> mdl, const py::object & params) {
                 if (!mdl) {
                     throw py::value_error("model is None");
                 }
                 // a SamplingParams (llama_rewire.engine.sampling), read field by field by name
                 sampler_params p;
                 p.temperature = field<float>(params, "temperature");
                 p.top_k = field<int32_t>(params, "top_k");
                 p.top_p = field<float>(params, "top_p");
                 p.min_p = field<float>(params, "min_p");
                 p.typical_p = field<float>(params, "typical_p");
                 p.min_keep = field<int32_t>(params, "min_keep");
                 p.repeat_penalty = field<float>(params, "repeat_penalty");
                 p.frequency_penalty = field<float>(params, "frequency_penalty");
                 p.presence_penalty = field<float>(params, "presence_penalty");
                 p.penalty_last_n = field<int32_t>(params, "penalty_last_n");
                 p.mirostat_mode = field<int32_t>(params, "mirostat_mode");
                 p.mirostat_tau = field<float>(params, "mirostat_tau");
                 p.mirostat_eta = field<float>(params, "mirostat_eta");
                 p.seed = field<uint32_t>(params, "seed");
                 return std::make_unique<sampler>(
                     std::move(mdl), p, field<std::vector<std::pair<llama_token, float>>>(params, "logit_bias"),
                     field<std::string>(params, "grammar"), field<bool>(params, "grammar_lazy"),
                     field<std::vector<std::string>>(params, "trigger_patterns"),
                     field<std::vector<llama_token>>(params, "trigger_tokens"));
             }),
             py::arg("model"), py::arg("params"),
             "A sampler chain built from a SamplingParams (or any object with its fields).")
        .def("sample", &sampler::sample, py::arg("ctx"), py::arg("idx") = -1)
        .def("sample_logits", &sampler::sample_logits, py::arg("logits"))
        .def("accept", &sampler::accept, py::arg("token"), py::arg("grammar") = true)
        .def("accept_grammar", &sampler::accept_grammar, py::arg("token"))
        .def("reset", &sampler::reset)
        .def_property_readonly("has_grammar", &sampler::has_grammar);
    m.def("grammar_check", &grammar_check, py::arg("model"), py::arg("gbnf"),
          "Whether the GBNF text parses and has a 'root' rule.");
}

} // namespace rewire
