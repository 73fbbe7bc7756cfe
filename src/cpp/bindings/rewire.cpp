// The activation-override table (llama-rewire.h).
#include "core.h"

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
        default:                           throw std::runtime_error(where + "llama_rewire error " + std::to_string(rc));
    }
}

static void rewire_set(py::handle ctx, const std::vector<std::tuple<int32_t, float, float>> & table) {
    llama_context * c = context_ptr(ctx);
    std::vector<llama_rewire_act> acts;
    acts.reserve(table.size());
    for (const auto & [type, param, threshold] : table) {
        acts.push_back(llama_rewire_act{(llama_rewire_act_type) type, param, threshold});
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

void bind_rewire(py::module_ & m) {
    py::list names;
    for (int32_t i = 0; i < LLAMA_REWIRE_ACT_COUNT; ++i) {
        names.append(llama_rewire_act_name((llama_rewire_act_type) i));
    }
    m.attr("ACT_NAMES") = py::tuple(names);
    m.def("act_check", [](int32_t type, float param, float threshold) {
        return llama_rewire_act_check(llama_rewire_act{(llama_rewire_act_type) type, param, threshold});
    }, py::arg("type"), py::arg("param"), py::arg("threshold") = 0.0f,
       "0 if (type, param, threshold) is a valid table entry, else a negative llama_rewire_status.");
    m.def("rewire_n_layer", [](py::handle ctx) { return llama_rewire_n_layer(context_ptr(ctx)); }, py::arg("ctx"));
    m.def("rewire_set", &rewire_set, py::arg("ctx"), py::arg("table"),
          "Replace the table: one (type, param, threshold) per layer, or [] to restore every layer.");
    m.def("rewire_get", &rewire_get, py::arg("ctx"));
    m.def("rewire_describe", &rewire_describe, py::arg("ctx"), py::arg("layer"));
}

} // namespace rewire
