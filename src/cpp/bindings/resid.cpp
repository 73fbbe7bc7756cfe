// The residual stream (llama-rewire.h): taps read after a decode, and edits (patch, ablate, add).
#include "core.h"

#include <optional>
#include <tuple>
#include <vector>

namespace rewire {

[[noreturn]] static void resid_throw(int32_t rc, const std::string & where) {
    switch (rc) {
        case LLAMA_REWIRE_ERR_ARG:     throw py::value_error(where + "bad argument");
        case LLAMA_REWIRE_ERR_LAYER:   throw py::value_error(where + "layer index out of range");
        case LLAMA_REWIRE_ERR_POINT:   throw py::value_error(where + "this layer has no such point (or it was not tapped)");
        case LLAMA_REWIRE_ERR_EDIT:    throw py::value_error(where + "bad edit (kind, rows, positions or a value that is not finite)");
        case LLAMA_REWIRE_ERR_RESERVE: throw std::runtime_error(where + "the edited graph could not be reserved; the previous edits are kept");
        default:                       throw std::runtime_error(where + "llama_rewire error " + std::to_string(rc));
    }
}

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// One edit from Python: (kind, point, layer, values [n, width], positions [n] or None, pos_begin, pos_end).
using py_edit = std::tuple<int32_t, int32_t, int32_t, f32_array, std::optional<i32_array>, int32_t, int32_t>;

static void edits_set(py::handle ctx, const std::vector<py_edit> & in) {
    llama_context * c = context_ptr(ctx);
    std::vector<llama_rewire_edit> edits;
    edits.reserve(in.size());
    for (const auto & [kind, point, il, values, pos, begin, end] : in) {
        if (values.ndim() != 2) {
            throw py::value_error("edit values must be a 2-D array [rows, width]");
        }
        const int32_t width = llama_rewire_point_width(c, point, il);
        if (width <= 0 || values.shape(1) != width) {
            throw py::value_error("edit of layer " + std::to_string(il) + ": rows of " + std::to_string(values.shape(1)) +
                                  " values, the point has " + std::to_string(width));
        }
        if (pos && (pos->ndim() != 1 || pos->shape(0) != values.shape(0))) {
            throw py::value_error("edit positions must be one per row");
        }
        edits.push_back(llama_rewire_edit{kind, point, il, (int32_t) values.shape(0), values.data(),
                                          pos ? pos->data() : nullptr, begin, end});
    }
    int32_t bad = -1;
    int32_t rc;
    {
        py::gil_scoped_release release;
        rc = llama_rewire_edits_set(c, edits.data(), (int32_t) edits.size(), &bad);
    }
    if (rc != LLAMA_REWIRE_OK) {
        resid_throw(rc, bad >= 0 ? "edit " + std::to_string(bad) + ": " : "");
    }
}

static void taps_set(py::handle ctx, const std::vector<uint32_t> & taps) {
    llama_context * c = context_ptr(ctx);
    int32_t rc;
    {
        py::gil_scoped_release release;
        rc = llama_rewire_taps_set(c, taps.data(), (int32_t) taps.size());
    }
    if (rc != LLAMA_REWIRE_OK) {
        resid_throw(rc, "taps: ");
    }
}

// (values [rows, width], positions [rows]) of a tapped point after the last decode
static py::tuple tap_read(py::handle ctx, int32_t point, int32_t il) {
    llama_context * c = context_ptr(ctx);
    int64_t width = 0;
    const int32_t rows = llama_rewire_tap_read(c, point, il, nullptr, 0, &width, nullptr);
    if (rows < 0) {
        resid_throw(rows, "layer " + std::to_string(il) + ": ");
    }
    f32_array out({(py::ssize_t) rows, (py::ssize_t) width});
    i32_array pos((py::ssize_t) rows);
    const int32_t rc = llama_rewire_tap_read(c, point, il, out.mutable_data(), (int64_t) rows * width, &width, pos.mutable_data());
    if (rc < 0) {
        resid_throw(rc, "layer " + std::to_string(il) + ": ");
    }
    return py::make_tuple(out, pos);
}

void bind_resid(py::module_ & m) {
    m.attr("POINT_NAMES") = py::make_tuple("resid_post", "attn_out", "ffn_out", "ffn_act");
    m.attr("EDIT_PATCH")  = (int) LLAMA_REWIRE_EDIT_PATCH;
    m.attr("EDIT_ABLATE") = (int) LLAMA_REWIRE_EDIT_ABLATE;
    m.attr("EDIT_ADD")    = (int) LLAMA_REWIRE_EDIT_ADD;
    m.def("rewire_point_width", [](py::handle ctx, int32_t point, int32_t il) {
        const int32_t w = llama_rewire_point_width(context_ptr(ctx), point, il);
        if (w < 0) {
            resid_throw(w, "");
        }
        return w;
    }, py::arg("ctx"), py::arg("point"), py::arg("layer"),
       "Values per token of a point of a layer (0 where the layer has no such tensor).");
    m.def("rewire_edits_set", &edits_set, py::arg("ctx"), py::arg("edits"),
          "Replace the residual-stream edits: (kind, point, layer, values [n, width], positions or None, begin, end).");
    m.def("rewire_taps_set", &taps_set, py::arg("ctx"), py::arg("taps"),
          "Tap points: one bit mask of (1 << point) per layer, or [] for none.");
    m.def("rewire_tap_read", &tap_read, py::arg("ctx"), py::arg("point"), py::arg("layer"),
          "(values [rows, width], positions [rows]) of a tapped point after the last decode.");
}

} // namespace rewire
