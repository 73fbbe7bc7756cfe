// The activation-override table (llama-rewire.h).
#include "core.h"

#include <array>
#include <vector>

namespace rewire {

// llama_rewire_status -> (Python exception type, message)
[[noreturn]] static void rewire_throw(int32_t rc, int32_t layer) {
    const std::string where = layer >= 0 ? "layer " + std::to_string(layer) + ": " : "";
    switch (rc) {
        case LLAMA_REWIRE_ERR_ARG:         throw py::value_error(where + "the table must have one entry per layer");
        case LLAMA_REWIRE_ERR_LAYER:       throw py::value_error(where + "layer index out of range");
        case LLAMA_REWIRE_ERR_ACT:         throw py::value_error(where + "unknown activation type");
        case LLAMA_REWIRE_ERR_PARAM:       throw py::value_error(where + "activation parameter is NaN, infinite or out of range");
        case LLAMA_REWIRE_ERR_UNREACHABLE: throw py::value_error(where + "this layer has no feed-forward network the override can reach");
        case LLAMA_REWIRE_ERR_RESERVE:     throw std::runtime_error(where + "the rewired graph could not be reserved; the previous table is kept");
        case LLAMA_REWIRE_ERR_EXPR:        throw py::value_error(where + "the expression program is malformed or over its limits");
        case LLAMA_REWIRE_ERR_KNOB:        throw py::value_error(where + "a knob is out of range (scale not finite, head or expert index, experts_used)");
        case LLAMA_REWIRE_ERR_SKIP:        throw py::value_error(where + "this layer can't skip that sublayer");
        default:                           throw std::runtime_error(where + "llama_rewire error " + std::to_string(rc));
    }
}

static void rewire_set(py::handle ctx, const std::vector<std::tuple<int32_t, float, float>> & table) {
    llama_context * c = context_ptr(ctx);
    std::vector<llama_rewire_act> acts;
    acts.reserve(table.size());
    for (const auto & [type, param, threshold] : table) {
        acts.push_back(llama_rewire_act{(llama_rewire_act_type) type, param, threshold, nullptr, 0});
    }
    int32_t bad = -1;
    int32_t rc;
    {
        py::gil_scoped_release release;
        rc = llama_rewire_set(c, acts.data(), (int32_t) acts.size(), &bad);
    }
    if (rc != LLAMA_REWIRE_OK) {
        rewire_throw(rc, bad);
    }
}

// One activation from Python: (type, param, threshold, program), program a list of (op, a, b).
using py_op  = std::tuple<int32_t, float, float>;
using py_act = std::tuple<int32_t, float, float, std::vector<py_op>>;
using py_layer = std::tuple<std::array<py_act, LLAMA_REWIRE_SCOPE_COUNT>, bool, bool, float, float,
                            std::vector<int32_t>, int32_t, std::vector<int32_t>>;

static void wiring_set(py::handle ctx, const std::vector<py_layer> & table) {
    llama_context * c = context_ptr(ctx);
    // the C entries point into these, which live until the call returns
    std::vector<std::vector<llama_rewire_op>> programs;
    programs.reserve(table.size() * LLAMA_REWIRE_SCOPE_COUNT);
    std::vector<llama_rewire_layer> layers;
    layers.reserve(table.size());
    for (const auto & [acts, skip_attn, skip_ffn, attn_scale, ffn_scale, heads_off, experts_used, experts_off] : table) {
        llama_rewire_layer l = llama_rewire_layer_identity();
        for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
            const auto & [type, param, threshold, program] = acts[s];
            programs.emplace_back();
            for (const auto & [op, a, b] : program) {
                programs.back().push_back(llama_rewire_op{(llama_rewire_op_type) op, a, b});
            }
            l.act[s] = llama_rewire_act{(llama_rewire_act_type) type, param, threshold,
                                        programs.back().empty() ? nullptr : programs.back().data(),
                                        (int32_t) programs.back().size()};
        }
        l.skip_attn     = skip_attn;
        l.skip_ffn      = skip_ffn;
        l.attn_scale    = attn_scale;
        l.ffn_scale     = ffn_scale;
        l.experts_used  = experts_used;
        l.heads_off     = heads_off.data();
        l.n_heads_off   = (int32_t) heads_off.size();
        l.experts_off   = experts_off.data();
        l.n_experts_off = (int32_t) experts_off.size();
        layers.push_back(l);
    }
    int32_t bad = -1;
    int32_t rc;
    {
        py::gil_scoped_release release;
        rc = llama_rewire_wiring_set(c, layers.data(), (int32_t) layers.size(), &bad);
    }
    if (rc != LLAMA_REWIRE_OK) {
        rewire_throw(rc, bad);
    }
}

static py_act act_tuple(const llama_rewire_act & a) {
    std::vector<py_op> program;
    for (int32_t i = 0; i < a.n_expr; ++i) {
        program.emplace_back((int32_t) a.expr[i].op, a.expr[i].a, a.expr[i].b);
    }
    return py_act{(int32_t) a.type, a.param, a.threshold, program};
}

static std::vector<py_layer> wiring_get(py::handle ctx) {
    llama_context * c = context_ptr(ctx);
    std::vector<py_layer> out;
    const int32_t n = llama_rewire_n_layer(c);
    for (int32_t il = 0; il < n; ++il) {
        llama_rewire_layer l;
        const int32_t rc = llama_rewire_wiring_get(c, il, &l);
        if (rc != LLAMA_REWIRE_OK) {
            rewire_throw(rc, il);
        }
        std::array<py_act, LLAMA_REWIRE_SCOPE_COUNT> acts;
        for (int s = 0; s < LLAMA_REWIRE_SCOPE_COUNT; ++s) {
            acts[s] = act_tuple(l.act[s]);
        }
        out.emplace_back(acts, l.skip_attn, l.skip_ffn, l.attn_scale, l.ffn_scale,
                         std::vector<int32_t>(l.heads_off, l.heads_off + l.n_heads_off), l.experts_used,
                         std::vector<int32_t>(l.experts_off, l.experts_off + l.n_experts_off));
    }
    return out;
}

static py::dict layer_describe(py::handle ctx, int32_t il) {
    llama_rewire_layer_info info{};
    const int32_t rc = llama_rewire_layer_describe(context_ptr(ctx), il, &info);
    if (rc != LLAMA_REWIRE_OK) {
        rewire_throw(rc, il);
    }
    py::dict d;
    d["attn"]             = info.attn;
    d["n_head"]           = info.n_head;
    d["n_head_kv"]        = info.n_head_kv;
    d["recurrent"]        = info.recurrent;
    d["kv_reused"]        = info.kv_reused;
    d["dense"]            = info.scopes[LLAMA_REWIRE_SCOPE_DENSE];
    d["shared"]           = info.scopes[LLAMA_REWIRE_SCOPE_SHARED];
    d["experts"]          = info.scopes[LLAMA_REWIRE_SCOPE_EXPERTS];
    d["n_expert"]         = info.n_expert;
    d["n_expert_used"]    = info.n_expert_used;
    d["max_experts_used"] = info.max_experts_used;
    d["attn_post_norm"]   = info.attn_post_norm;
    d["ffn_post_norm"]    = info.ffn_post_norm;
    return d;
}

static std::vector<std::tuple<int32_t, float, float>> rewire_get(py::handle ctx) {
    llama_context * c = context_ptr(ctx);
    std::vector<llama_rewire_act> acts(llama_rewire_n_layer(c));
    const int32_t rc = llama_rewire_get(c, acts.data(), (int32_t) acts.size());
    if (rc != LLAMA_REWIRE_OK) {
        rewire_throw(rc, -1);
    }
    std::vector<std::tuple<int32_t, float, float>> out;
    for (const auto & a : acts) {
        out.emplace_back((int32_t) a.type, a.param, a.threshold);
    }
    return out;
}

static py::dict rewire_describe(py::handle ctx, int32_t il) {
    llama_rewire_ffn_info info{};
    const int32_t rc = llama_rewire_ffn_describe(context_ptr(ctx), il, &info);
    if (rc != LLAMA_REWIRE_OK) {
        rewire_throw(rc, il);
    }
    py::dict d;
    d["act"]     = info.act ? py::object(py::str(info.act)) : py::object(py::none());
    d["gated"]   = info.gated;
    d["fused"]   = info.fused;
    d["clamped"] = info.clamped;
    d["dense"]   = (info.kinds & LLAMA_REWIRE_FFN_DENSE) != 0;
    d["moe"]     = (info.kinds & LLAMA_REWIRE_FFN_MOE) != 0;
    return d;
}

// llama_rewire_graph_nodes: one dict per node (name, op, sub-op, type, shape, sources, backend)
static py::dict node_record(const ggml_tensor * t) {
    py::dict d;
    d["name"] = std::string(ggml_get_name(t));
    d["op"]   = std::string(ggml_op_name(t->op));
    d["sub"]  = t->op == GGML_OP_UNARY ? py::object(py::str(ggml_unary_op_name(ggml_get_unary_op(t))))
              : t->op == GGML_OP_GLU   ? py::object(py::str(ggml_glu_op_name(ggml_get_glu_op(t))))
              : py::object(py::none());
    d["type"] = std::string(ggml_type_name(t->type));
    d["ne"]   = py::make_tuple(t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    d["nb"]   = py::make_tuple(t->nb[0], t->nb[1], t->nb[2], t->nb[3]);
    d["contiguous"]      = ggml_is_contiguous(t);
    d["contiguous_rows"] = ggml_is_contiguous_rows(t);
    return d;
}

static py::tuple graph_nodes(py::handle ctx, uint32_t n_tokens) {
    llama_context * c = context_ptr(ctx);
    struct collected {
        std::vector<const ggml_tensor *> nodes;
        std::vector<std::string> backends;
    } out;
    auto fn = [](const ggml_tensor * node, const char * backend, void * ud) {
        auto * o = static_cast<collected *>(ud);
        o->nodes.push_back(node);
        o->backends.emplace_back(backend ? backend : "");
    };
    int32_t n_splits = 0;
    {
        py::gil_scoped_release release;
        n_splits = llama_rewire_graph_nodes(c, n_tokens, fn, &out);
    }
    if (n_splits < 0) {
        rewire_throw(n_splits, -1);
    }
    // the nodes live in the context's graph until the next decode: read them now, with the GIL
    py::list nodes;
    for (size_t i = 0; i < out.nodes.size(); ++i) {
        const ggml_tensor * t = out.nodes[i];
        py::dict d = node_record(t);
        py::list src;
        for (const ggml_tensor * s : t->src) {
            if (s != nullptr) {
                src.append(node_record(s));
            }
        }
        d["src"]     = src;
        d["backend"] = out.backends[i];
        nodes.append(d);
    }
    return py::make_tuple(nodes, n_splits);
}

void bind_rewire(py::module_ & m) {
    m.def("rewire_graph_nodes", &graph_nodes, py::arg("ctx"), py::arg("n_tokens") = 0,
          "(nodes, n_splits) of the graph of a ubatch of n_tokens (0: the worst case), split between the "
          "backends but not computed: each node a dict of name, op, sub (unary / GLU op), type, ne, "
          "contiguous, contiguous_rows, src (the same for each source) and backend.");
    py::list names;
    for (int32_t i = 0; i < LLAMA_REWIRE_ACT_EXPR; ++i) { // the named activations (not the expression slot)
        names.append(llama_rewire_act_name((llama_rewire_act_type) i));
    }
    m.attr("ACT_NAMES") = py::tuple(names);
    m.attr("ACT_EXPR") = (int32_t) LLAMA_REWIRE_ACT_EXPR;
    py::dict ops;
    static const char * const op_names[LLAMA_REWIRE_OP_COUNT] = {
        "x", "dup", "affine", "add", "sub", "mul", "div", "rdiv", "max", "min", "clamp", "sqr", "sqrt",
        "exp", "log", "abs", "neg", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus", "sin", "cos", "step",
    };
    for (int32_t i = 0; i < LLAMA_REWIRE_OP_COUNT; ++i) {
        ops[op_names[i]] = i;
    }
    m.attr("EXPR_OPS")       = ops;
    m.attr("EXPR_MAX_NODES") = LLAMA_REWIRE_EXPR_MAX_NODES;
    m.attr("EXPR_MAX_STACK") = LLAMA_REWIRE_EXPR_MAX_STACK;
    m.attr("EXPR_MAX_OPS")   = LLAMA_REWIRE_EXPR_MAX_OPS;
    m.def("act_check", [](int32_t type, float param, float threshold) {
        return llama_rewire_act_check(llama_rewire_act{(llama_rewire_act_type) type, param, threshold, nullptr, 0});
    }, py::arg("type"), py::arg("param"), py::arg("threshold") = 0.0f,
       "0 if (type, param, threshold) is a valid table entry, else a negative llama_rewire_status.");
    m.def("rewire_n_layer", [](py::handle ctx) { return llama_rewire_n_layer(context_ptr(ctx)); }, py::arg("ctx"));
    m.def("rewire_set", &rewire_set, py::arg("ctx"), py::arg("table"),
          "Replace the table: one (type, param, threshold) per layer, or [] to restore every layer.");
    m.def("rewire_get", &rewire_get, py::arg("ctx"));
    m.def("rewire_describe", &rewire_describe, py::arg("ctx"), py::arg("layer"));
    m.def("rewire_wiring_set", &wiring_set, py::arg("ctx"), py::arg("layers"),
          "Replace the wiring: one (acts, skip_attn, skip_ffn, attn_scale, ffn_scale, heads_off, experts_used, "
          "experts_off) per layer, acts a (type, param, threshold, program) per scope; [] restores the model.");
    m.def("rewire_wiring_get", &wiring_get, py::arg("ctx"));
    m.def("rewire_layer_describe", &layer_describe, py::arg("ctx"), py::arg("layer"));
}

} // namespace rewire
