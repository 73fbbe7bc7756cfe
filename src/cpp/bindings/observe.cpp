// Per-layer statistics of FFN activations, reduced natively inside the scheduler's eval callback.
#include "observe.h"

#include "ggml-backend.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace rewire {

ffn_observer::ffn_observer(int32_t n_layer, float eps, int32_t n_bins, float log10_min, float log10_max)
    : n_layer_(n_layer), eps_(eps), n_bins_(n_bins), log10_min_(log10_min), log10_max_(log10_max) {
    reset();
}

void ffn_observer::reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto & kind : stats_) {
        kind.assign(n_layer_, act_stats{});
        for (auto & s : kind) {
            s.hist.assign(n_bins_ + 1, 0);
        }
    }
}

std::vector<act_stats> ffn_observer::snapshot(int kind) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_[kind];
}

// "blk.<il>.ffn_down..." -> il
static bool ffn_down_layer(const char * name, int * layer) {
    int il = -1;
    int n  = 0;
    if (std::sscanf(name, "blk.%d.ffn_down%n", &il, &n) == 1 && n > 0) {
        *layer = il;
        return true;
    }
    return false;
}

bool ffn_observer::target(const ggml_tensor * t, int * kind, int * layer, const ggml_tensor ** data) const {
    int il = -1;
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) && t->src[0] && t->src[1] &&
        ffn_down_layer(t->src[0]->name, &il)) {
        *kind = 0;
        *data = t->src[1];
    } else if (std::sscanf(t->name, "ffn_rewire_act-%d", &il) == 1) {
        *kind = 1;
        *data = t;
    } else if (std::sscanf(t->name, "ffn_rewire_raw-%d", &il) == 1) {
        *kind = 2;
        *data = t;
    } else {
        return false;
    }
    if (il < 0 || il >= n_layer_ || ((*data)->type != GGML_TYPE_F32 && (*data)->type != GGML_TYPE_F16)) {
        return false;
    }
    *layer = il;
    return true;
}

bool ffn_observer::callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<ffn_observer *>(user_data);
    int kind = 0;
    int layer = 0;
    const ggml_tensor * data = nullptr;
    if (!self->enabled_ || !self->target(t, &kind, &layer, &data)) {
        return !ask; // ask: not interested; observe: keep computing
    }
    if (ask) {
        return true;
    }
    self->accumulate(kind, layer, data);
    return true;
}

void ffn_observer::accumulate(int kind, int layer, const ggml_tensor * t) {
    // gather the tensor as contiguous floats (it may live in device memory, or be a strided view)
    const int64_t n = ggml_nelements(t);
    buf_.resize(n);
    const bool host = t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer);
    std::vector<uint8_t> raw;
    const uint8_t * base = nullptr;
    if (host) {
        base = static_cast<const uint8_t *>(t->data);
    } else {
        raw.resize(ggml_nbytes(t));
        ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
        base = raw.data();
    }
    int64_t k = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2) {
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                const uint8_t * row = base + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) {
                    const uint8_t * p = row + i0 * t->nb[0];
                    buf_[k++] = t->type == GGML_TYPE_F32 ? *reinterpret_cast<const float *>(p)
                                                         : ggml_fp16_to_fp32(*reinterpret_cast<const ggml_fp16_t *>(p));
                }
            }
        }
    }

    act_stats local;
    local.hist.assign(n_bins_ + 1, 0);
    const double scale = n_bins_ / double(log10_max_ - log10_min_);
    for (int64_t i = 0; i < n; ++i) {
        const double x = buf_[i];
        const double a = std::fabs(x);
        local.sum   += x;
        local.sumsq += x * x;
        if (a < eps_) {
            local.n_small++;
        }
        if (x == 0.0) {
            local.n_zero++;
            local.hist[0]++;
            continue;
        }
        int64_t b = (int64_t) std::floor((std::log10(a) - log10_min_) * scale);
        b = b < 0 ? 0 : b >= n_bins_ ? n_bins_ - 1 : b;
        local.hist[1 + b]++;
    }
    local.count = n;

    std::lock_guard<std::mutex> lock(mutex_);
    act_stats & s = stats_[kind][layer];
    s.count   += local.count;
    s.sum     += local.sum;
    s.sumsq   += local.sumsq;
    s.n_zero  += local.n_zero;
    s.n_small += local.n_small;
    for (int32_t b = 0; b <= n_bins_; ++b) {
        s.hist[b] += local.hist[b];
    }
}

} // namespace rewire
