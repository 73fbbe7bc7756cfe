// llama-rewire: the nodes of a graph as the scheduler would run them, for tests and tools.
#include "llama-rewire.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-memory.h"

#include "ggml-backend.h"

#include <algorithm>
#include <exception>

int32_t llama_rewire_graph_nodes(llama_context * ctx, uint32_t n_tokens, llama_rewire_node_fn fn, void * user_data) {
    if (ctx == nullptr || fn == nullptr) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    try {
        const llama_cparams & cparams = ctx->rewire_cparams();
        const uint32_t worst = std::min(cparams.n_ctx, cparams.n_ubatch);
        n_tokens = n_tokens == 0 ? worst : std::min(n_tokens, worst);
        // a single token is one sequence's step; the worst case spreads its tokens over every sequence
        const uint32_t n_seqs    = std::min(n_tokens, n_tokens == worst ? cparams.n_seq_max : 1u);
        const uint32_t n_outputs = std::max(1u, std::min(n_tokens, cparams.n_outputs_max));

        ctx->synchronize();
        llama_memory_context_ptr mctx;
        if (llama_memory_t memory = ctx->get_memory()) {
            mctx = memory->init_full();
            if (!mctx) {
                LLAMA_LOG_ERROR("%s: failed to initialize the memory module\n", __func__);
                return LLAMA_REWIRE_ERR_RESERVE;
            }
        }
        // split only: the backends are assigned, nothing is allocated (the compute buffers stay as sized)
        ggml_cgraph * gf = ctx->graph_reserve(n_tokens, n_seqs, n_outputs, mctx.get(), /*split_only=*/true);
        if (gf == nullptr) {
            return LLAMA_REWIRE_ERR_RESERVE;
        }
        ggml_backend_sched_t sched = ctx->get_sched();
        for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
            ggml_tensor * node = ggml_graph_node(gf, i);
            ggml_backend_t backend = ggml_backend_sched_get_tensor_backend(sched, node);
            fn(node, backend ? ggml_backend_name(backend) : nullptr, user_data);
        }
        return ggml_backend_sched_get_n_splits(sched);
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s: failed to build the graph: %s\n", __func__, e.what());
        return LLAMA_REWIRE_ERR_RESERVE;
    }
}
