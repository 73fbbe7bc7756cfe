// Sampler: llama.cpp's sampler chain (top-k, top-p, min-p, temperature, then seeded draw or greedy).
#include "core.h"

namespace rewire {

class sampler {
public:
    sampler(float temperature, int32_t top_k, float top_p, float min_p, uint32_t seed) {
        chain_ = llama_sampler_chain_init(llama_sampler_chain_default_params());
        if (temperature <= 0.0f) {
            llama_sampler_chain_add(chain_, llama_sampler_init_greedy());
            return;
        }
        if (top_k > 0) {
            llama_sampler_chain_add(chain_, llama_sampler_init_top_k(top_k));
        }
        if (top_p < 1.0f) {
            llama_sampler_chain_add(chain_, llama_sampler_init_top_p(top_p, 1));
        }
        if (min_p > 0.0f) {
            llama_sampler_chain_add(chain_, llama_sampler_init_min_p(min_p, 1));
        }
        llama_sampler_chain_add(chain_, llama_sampler_init_temp(temperature));
        llama_sampler_chain_add(chain_, llama_sampler_init_dist(seed));
    }
    ~sampler() { llama_sampler_free(chain_); }
    sampler(const sampler &) = delete;
    sampler & operator=(const sampler &) = delete;

    // Sample from the logits of output idx of the last decode (-1: the last output), and accept it.
    llama_token sample(py::handle ctx, int32_t idx) {
        llama_context * c = context_ptr(ctx);
        llama_token t;
        {
            py::gil_scoped_release release;
            t = llama_sampler_sample(chain_, c, idx);
        }
        return t;
    }

    void reset() { llama_sampler_reset(chain_); }

private:
    llama_sampler * chain_ = nullptr;
};

void bind_sampler(py::module_ & m) {
    py::class_<sampler>(m, "Sampler", "A llama.cpp sampler chain.")
        .def(py::init<float, int32_t, float, float, uint32_t>(), py::arg("temperature") = 0.8f,
             py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
             py::arg("seed") = 0xFFFFFFFFu)
        .def("sample", &sampler::sample, py::arg("ctx"), py::arg("idx") = -1)
        .def("reset", &sampler::reset);
}

} // namespace rewire
