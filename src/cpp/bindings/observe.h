// Per-layer statistics of FFN activations, reduced natively inside the scheduler's eval callback.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <mutex>
#include <vector>

namespace rewire {

// Accumulators of one tensor kind over one layer.
struct act_stats {
    uint64_t count   = 0;
    double   sum     = 0.0;
    double   sumsq   = 0.0;
    uint64_t n_zero  = 0;  // x == 0
    uint64_t n_small = 0;  // |x| < eps
    std::vector<uint64_t> hist; // |x| histogram: bin 0 holds exact zeros, then log-spaced bins
};

// Observes, per layer, the input of ffn_down (the FFN activation times up, as the down projection sees
// it: the tensor llama.cpp's imatrix tool reads) and, where an override builds it as a node of its own,
// the activation itself ("ffn_rewire_act-<layer>"), and for a thresholded one the activation before
// thresholding ("ffn_rewire_raw-<layer>").
class ffn_observer {
public:
    static constexpr int N_KINDS = 3; // 0: ffn_down input, 1: activation, 2: activation before threshold

    ffn_observer(int32_t n_layer, float eps, int32_t n_bins, float log10_min, float log10_max);

    // ggml_backend_sched_eval_callback
    static bool callback(ggml_tensor * t, bool ask, void * user_data);

    void set_enabled(bool on) { enabled_ = on; }
    bool enabled() const { return enabled_; }
    void reset();

    // copies, for Python
    std::vector<act_stats> snapshot(int kind) const;
    int32_t n_layer() const { return n_layer_; }
    int32_t n_bins() const { return n_bins_; }
    float log10_min() const { return log10_min_; }
    float log10_max() const { return log10_max_; }
    float eps() const { return eps_; }

private:
    // which (kind, layer) a node is, or false
    bool target(const ggml_tensor * t, int * kind, int * layer, const ggml_tensor ** data) const;
    void accumulate(int kind, int layer, const ggml_tensor * t);

    int32_t n_layer_;
    float   eps_;
    int32_t n_bins_;
    float   log10_min_;
    float   log10_max_;
    bool    enabled_ = true;
    std::vector<act_stats> stats_[N_KINDS];
    std::vector<float> buf_;
    mutable std::mutex mutex_;
};

} // namespace rewire
