// llama-rewire: the residual stream: taps (graph outputs read after a decode) and edits (patch, ablate, add).
#include "llama-rewire-graph.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "llama-batch.h"
#include "llama-context.h"
#include "llama-cparams.h"
#include "llama-impl.h"
#include "llama-hparams.h"
#include "llama-model.h"

#include "ggml.h"
#include "ggml-backend.h"

static const char * const REWIRE_POINT_NAMES[LLAMA_REWIRE_POINT_COUNT] = {"resid_post", "attn_out", "ffn_out", "ffn_act"};

// The width a point has in layer il of the model (0: the layer has no such tensor).
static int32_t rewire_point_width(const llama_hparams & hparams, const llama_rewire_state & state, int32_t point, int32_t il) {
    const llama_rewire_state::shape & shape = state.model[il];
    switch (point) {
        case LLAMA_REWIRE_POINT_RESID_POST:
        case LLAMA_REWIRE_POINT_ATTN_OUT:
            return (int32_t) hparams.n_embd;
        case LLAMA_REWIRE_POINT_FFN_OUT:
            return shape.shexp ? 0 : (int32_t) hparams.n_embd;
        case LLAMA_REWIRE_POINT_FFN_ACT:
            return shape.moe ? 0 : shape.n_ff;
        default:
            return 0;
    }
}

// A graph input whose values come from the point's current edit at each ubatch, so that changing only
// the values (a new alpha, other patched values) keeps the graph.
class llama_rewire_edit_input : public llm_graph_input_i {
public:
    enum what_t { PATCH_KEEP, PATCH_VALUES, ABLATE_DIRS, ABLATE_DIRS_T, ABLATE_MASK, ADD_VALUES };

    llama_rewire_edit_input(std::shared_ptr<llama_rewire_state> state, int il, int point, what_t what, ggml_tensor * t)
        : state(std::move(state)), il(il), point(point), what(what), t(t) {}

    void set_input(const llama_ubatch * ubatch) override {
        const llama_rewire_place & p = state->place(il, point);
        const int64_t width    = what == ABLATE_DIRS_T ? t->ne[1] : t->ne[0];
        const int64_t n_tokens = t->ne[1];
        std::vector<float> v(ggml_nelements(t), 0.0f);
        auto pos_of = [&](int64_t i) { return ubatch != nullptr && ubatch->pos != nullptr && i < (int64_t) ubatch->n_tokens ? ubatch->pos[i] : -1; };
        auto in = [](int32_t pos, int32_t begin, int32_t end) { return pos >= begin && (end < 0 || pos < end); };
        switch (what) {
            case PATCH_KEEP:
            case PATCH_VALUES:
                for (int64_t i = 0; i < n_tokens; ++i) {
                    const int32_t pos = pos_of(i);
                    int64_t j = -1;
                    for (size_t k = 0; k < p.patch_pos.size(); ++k) {
                        if (p.patch_pos[k] == pos) {
                            j = (int64_t) k;
                            break;
                        }
                    }
                    if (what == PATCH_KEEP) {
                        v[i] = j < 0 ? 1.0f : 0.0f;
                    } else if (j >= 0 && p.patch_values.size() >= (size_t) ((j + 1) * width)) {
                        std::memcpy(v.data() + i * width, p.patch_values.data() + j * width, width * sizeof(float));
                    }
                }
                break;
            case ABLATE_DIRS:
                // [width, n]: row k of the directions is column k of ne0 = width
                if (p.ablate_dirs.size() == v.size()) {
                    std::memcpy(v.data(), p.ablate_dirs.data(), v.size() * sizeof(float));
                }
                break;
            case ABLATE_DIRS_T: {
                // [n, width]: the transpose
                const int64_t n = t->ne[0];
                if (p.ablate_dirs.size() == v.size()) {
                    for (int64_t k = 0; k < n; ++k) {
                        for (int64_t c = 0; c < width; ++c) {
                            v[c * n + k] = p.ablate_dirs[k * width + c];
                        }
                    }
                }
                break;
            }
            case ABLATE_MASK:
                for (int64_t i = 0; i < n_tokens; ++i) {
                    v[i] = in(pos_of(i), p.ablate_begin, p.ablate_end) ? 1.0f : 0.0f;
                }
                break;
            case ADD_VALUES:
                for (int64_t i = 0; i < n_tokens; ++i) {
                    if (in(pos_of(i), p.add_begin, p.add_end) && p.add_values.size() == (size_t) width) {
                        std::memcpy(v.data() + i * width, p.add_values.data(), width * sizeof(float));
                    }
                }
                break;
        }
        ggml_backend_tensor_set(t, v.data(), 0, v.size() * sizeof(float));
    }

    bool can_reuse(const llm_graph_params & params) override {
        // the directions' shape is part of the graph's structure (rewire_gen); the others count tokens
        return what == ABLATE_DIRS || what == ABLATE_DIRS_T || t->ne[1] == (int64_t) params.ubatch.n_tokens;
    }

    std::shared_ptr<llama_rewire_state> state;
    int          il;
    int          point;
    what_t       what;
    ggml_tensor * t;
};

// The tensors one graph taps. Right before the graph computes, it tells the state that they (and this
// ubatch's positions) are the ones to read; when the graph is freed, it takes that back.
class llama_rewire_tap_registry : public llm_graph_input_i {
public:
    explicit llama_rewire_tap_registry(std::shared_ptr<llama_rewire_state> state) : state(std::move(state)) {}

    ~llama_rewire_tap_registry() override {
        if (state->tap_owner == this) {
            state->tap_owner = nullptr;
            state->tap_last.clear();
            state->tap_pos.clear();
        }
    }

    void set_input(const llama_ubatch * ubatch) override {
        state->tap_owner = this;
        state->tap_last  = recs;
        state->tap_pos.clear();
        if (ubatch != nullptr && ubatch->pos != nullptr) {
            state->tap_pos.assign(ubatch->pos, ubatch->pos + ubatch->n_tokens);
        }
    }

    bool can_reuse(const llm_graph_params & params) override {
        GGML_UNUSED(params);
        return true;
    }

    std::shared_ptr<llama_rewire_state> state;
    std::vector<llama_rewire_tap_rec>   recs;
};

// Indices of every row of a ubatch, 0..n-1: what the last layer's own row selection takes while the rows
// with outputs are picked after that layer.
class llama_rewire_rows_input : public llm_graph_input_i {
public:
    explicit llama_rewire_rows_input(ggml_tensor * t) : t(t) {}

    void set_input(const llama_ubatch * ubatch) override {
        GGML_UNUSED(ubatch);
        std::vector<int32_t> rows(t->ne[0]);
        for (size_t i = 0; i < rows.size(); ++i) {
            rows[i] = (int32_t) i;
        }
        ggml_backend_tensor_set(t, rows.data(), 0, rows.size() * sizeof(int32_t));
    }

    bool can_reuse(const llm_graph_params & params) override {
        return t->ne[0] == (int64_t) params.ubatch.n_tokens;
    }

    ggml_tensor * t;
};

static bool rewire_last_layer_tapped(const llama_rewire_state & state) {
    const size_t n_layer = state.model.size();
    if (n_layer == 0) {
        return false;
    }
    const size_t base = (n_layer - 1) * LLAMA_REWIRE_POINT_COUNT;
    return state.resid[base + LLAMA_REWIRE_POINT_RESID_POST].tapped || state.resid[base + LLAMA_REWIRE_POINT_FFN_OUT].tapped ||
           state.resid[base + LLAMA_REWIRE_POINT_FFN_ACT].tapped;
}

ggml_tensor * llama_rewire_out_ids(const llm_graph_context & gctx) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || state->out_ids_own) {
        return nullptr;
    }
    state->out_ids_late = state->resid_active && state->out_ids_late_ok && rewire_last_layer_tapped(*state);
    if (!state->out_ids_late) {
        return nullptr;
    }
    ggml_tensor * t = ggml_new_tensor_1d(gctx.ctx0, GGML_TYPE_I32, gctx.n_tokens);
    ggml_set_input(t);
    ggml_set_name(t, "rewire_all_rows");
    gctx.res->add_input(std::make_unique<llama_rewire_rows_input>(t));
    return t;
}

void llama_rewire_out_ids_built(const llm_graph_context & gctx, ggml_tensor * out_ids) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state != nullptr) {
        state->out_ids_built = out_ids;
    }
}

// Every use of out_ids in gf selects rows (GET_ROWS) of a tensor that build_cvec of the last layer depends
// on: then the selection can move after that layer.
static bool rewire_rows_only_in_last_layer(ggml_cgraph * gf, const ggml_tensor * out_ids, const ggml_tensor * cvec_last) {
    std::unordered_set<const ggml_tensor *> before;
    std::vector<const ggml_tensor *> todo = {cvec_last};
    while (!todo.empty()) {
        const ggml_tensor * t = todo.back();
        todo.pop_back();
        if (t == nullptr || !before.insert(t).second) {
            continue;
        }
        for (const ggml_tensor * src : t->src) {
            todo.push_back(src);
        }
    }
    int uses = 0;
    for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
        const ggml_tensor * node = ggml_graph_node(gf, i);
        for (int j = 0; j < GGML_MAX_SRC; ++j) {
            if (node->src[j] != out_ids) {
                continue;
            }
            if (node->op != GGML_OP_GET_ROWS || j != 1 || before.count(node) == 0) {
                return false;
            }
            uses++;
        }
    }
    return uses > 0;
}

void llama_rewire_resid_graph_done(const llm_graph_context & gctx) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr) {
        return;
    }
    if (!state->out_ids_checked && !state->out_ids_late && state->out_ids_built && state->cvec_last && gctx.gf) {
        state->out_ids_checked = true;
        state->out_ids_late_ok = rewire_rows_only_in_last_layer(gctx.gf, state->out_ids_built, state->cvec_last);
    }
    state->out_ids_built = nullptr;
    state->cvec_last     = nullptr;
    state->out_ids_late  = false;
}

static ggml_tensor * rewire_edit_input(const llm_graph_context & gctx, int il, int point,
        llama_rewire_edit_input::what_t what, int64_t ne0, int64_t ne1, const char * name) {
    ggml_tensor * t = ggml_new_tensor_2d(gctx.ctx0, GGML_TYPE_F32, ne0, ne1);
    ggml_set_input(t);
    ggml_format_name(t, "rewire_%s_%s-%d", REWIRE_POINT_NAMES[point], name, il);
    gctx.res->add_input(std::make_unique<llama_rewire_edit_input>(gctx.cparams.rewire, il, point, what, t));
    return t;
}

static void rewire_tap(const llm_graph_context & gctx, int il, int point, ggml_tensor * t) {
    llama_rewire_tap_registry * reg = nullptr;
    for (const llm_graph_input_ptr & input : gctx.res->inputs) {
        reg = dynamic_cast<llama_rewire_tap_registry *>(input.get());
        if (reg != nullptr) {
            break;
        }
    }
    if (reg == nullptr) {
        auto owned = std::make_unique<llama_rewire_tap_registry>(gctx.cparams.rewire);
        reg = owned.get();
        gctx.res->add_input(std::move(owned));
    }
    for (llama_rewire_tap_rec & rec : reg->recs) {
        if (rec.point == point && rec.il == il) {
            rec.t = t; // a later build of the same point (not expected) wins
            return;
        }
    }
    reg->recs.push_back({point, il, t});
}

// The rows with outputs of the last layer's output t (2-D), picked with upstream's own out_ids.
static ggml_tensor * rewire_pick_rows(const llm_graph_context & gctx, llama_rewire_state & state, ggml_tensor * t) {
    state.out_ids_own = true;
    ggml_tensor * ids = gctx.build_inp_out_ids();
    state.out_ids_own = false;
    ggml_tensor * cur = ggml_n_dims(t) > 2 ? ggml_reshape_2d(gctx.ctx0, t, t->ne[0], ggml_nelements(t) / t->ne[0]) : t;
    cur = ggml_get_rows(gctx.ctx0, cur, ids);
    ggml_set_name(cur, "rewire_output_rows");
    return cur;
}

ggml_tensor * llama_rewire_resid_point(const llm_graph_context & gctx, int il, llama_rewire_point point, ggml_tensor * t) {
    llama_rewire_state * state = gctx.cparams.rewire.get();
    if (state == nullptr || t == nullptr || il < 0 || (size_t) il >= state->model.size()) {
        return t;
    }
    const bool last = point == LLAMA_REWIRE_POINT_RESID_POST && (size_t) il + 1 == state->model.size();
    if (last) {
        state->cvec_last = t;
    }
    if (!state->resid_active) {
        return t;
    }
    const llama_rewire_place & p = state->place(il, point);
    if (!p.tapped && !p.edited()) {
        return last && state->out_ids_late ? rewire_pick_rows(gctx, *state, t) : t;
    }
    const int64_t width    = t->ne[0];
    const int64_t n_tokens = ggml_nelements(t) / width;
    const int32_t expected = rewire_point_width(gctx.hparams, *state, point, il);
    if (p.edited() && (width != expected || t->type != GGML_TYPE_F32)) {
        throw std::runtime_error(std::string("llama-rewire: ") + REWIRE_POINT_NAMES[point] + " of layer " +
                                 std::to_string(il) + " has " + std::to_string(width) + " values per token, not " +
                                 std::to_string(expected));
    }

    ggml_tensor * cur = t;
    if (!ggml_is_contiguous(cur)) {
        cur = ggml_cont(gctx.ctx0, cur);
        ggml_format_name(cur, "rewire_%s_cont-%d", REWIRE_POINT_NAMES[point], il);
    }
    if (ggml_n_dims(cur) > 2) {
        cur = ggml_reshape_2d(gctx.ctx0, cur, width, n_tokens);
    }
    if (p.patch) {
        ggml_tensor * keep = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::PATCH_KEEP, 1, n_tokens, "keep");
        ggml_tensor * vals = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::PATCH_VALUES, width, n_tokens, "patch");
        cur = ggml_add(gctx.ctx0, ggml_mul(gctx.ctx0, cur, keep), vals);
        ggml_format_name(cur, "rewire_%s_patched-%d", REWIRE_POINT_NAMES[point], il);
    }
    if (p.ablate_n > 0) {
        const int64_t n = p.ablate_n;
        ggml_tensor * r    = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::ABLATE_DIRS, width, n, "dirs");
        ggml_tensor * rt   = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::ABLATE_DIRS_T, n, width, "dirs_t");
        ggml_tensor * mask = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::ABLATE_MASK, 1, n_tokens, "mask");
        ggml_tensor * proj = ggml_mul_mat(gctx.ctx0, r, cur);          // [n, n_tokens] = R h
        ggml_tensor * back = ggml_mul_mat(gctx.ctx0, rt, proj);        // [width, n_tokens] = R^T (R h)
        cur = ggml_sub(gctx.ctx0, cur, ggml_mul(gctx.ctx0, back, mask));
        ggml_format_name(cur, "rewire_%s_ablated-%d", REWIRE_POINT_NAMES[point], il);
    }
    if (p.add) {
        ggml_tensor * a = rewire_edit_input(gctx, il, point, llama_rewire_edit_input::ADD_VALUES, width, n_tokens, "add");
        cur = ggml_add(gctx.ctx0, cur, a);
        ggml_format_name(cur, "rewire_%s_added-%d", REWIRE_POINT_NAMES[point], il);
    }
    if (p.tapped) {
        if (cur->type != GGML_TYPE_F32) {
            cur = ggml_cast(gctx.ctx0, cur, GGML_TYPE_F32); // a copy to read: the graph goes on with t
            ggml_format_name(cur, "rewire_%s_tap-%d", REWIRE_POINT_NAMES[point], il);
            ggml_set_output(cur);
            ggml_build_forward_expand(gctx.gf, cur);
            rewire_tap(gctx, il, point, cur);
            return last && state->out_ids_late ? rewire_pick_rows(gctx, *state, t) : t;
        }
        ggml_set_output(cur);
        ggml_build_forward_expand(gctx.gf, cur);
        rewire_tap(gctx, il, point, cur);
    }
    if (last && state->out_ids_late) {
        return rewire_pick_rows(gctx, *state, cur);
    }
    return cur == t ? t : ggml_reshape(gctx.ctx0, cur, t);
}

// ---------------------------------------------------------------- the C API

static llama_rewire_state * rewire_state_of(const llama_context * ctx) {
    return ctx == nullptr ? nullptr : const_cast<llama_context *>(ctx)->rewire_cparams().rewire.get();
}

int32_t llama_rewire_point_width(const struct llama_context * ctx, int32_t point, int32_t il) {
    const llama_rewire_state * state = rewire_state_of(ctx);
    if (state == nullptr || point < 0 || point >= LLAMA_REWIRE_POINT_COUNT) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    if (il < 0 || (size_t) il >= state->model.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    return rewire_point_width(ctx->get_model().hparams, *state, point, il);
}

static bool rewire_finite(const float * v, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(v[i])) {
            return false;
        }
    }
    return true;
}

static int32_t rewire_edit_take(const llama_context & ctx, const llama_rewire_state & state, const llama_rewire_edit & e,
                                std::vector<llama_rewire_place> & next) {
    if (e.kind < 0 || e.kind >= LLAMA_REWIRE_EDIT_COUNT || e.point < 0 || e.point >= LLAMA_REWIRE_POINT_COUNT) {
        return LLAMA_REWIRE_ERR_EDIT;
    }
    if (e.il < 0 || (size_t) e.il >= state.model.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    const int32_t width = rewire_point_width(ctx.get_model().hparams, state, e.point, e.il);
    if (width <= 0) {
        return LLAMA_REWIRE_ERR_POINT;
    }
    if (e.values == nullptr || e.n < 1 || (e.kind == LLAMA_REWIRE_EDIT_ADD && e.n != 1) ||
        (e.kind == LLAMA_REWIRE_EDIT_ABLATE && e.n > width) || e.n > (1 << 20)) {
        return LLAMA_REWIRE_ERR_EDIT;
    }
    const size_t n_values = (size_t) e.n * (size_t) width;
    if (!rewire_finite(e.values, n_values)) {
        return LLAMA_REWIRE_ERR_EDIT;
    }
    llama_rewire_place & p = next[(size_t) e.il * LLAMA_REWIRE_POINT_COUNT + e.point];
    std::vector<float> values(e.values, e.values + n_values);
    if (e.kind == LLAMA_REWIRE_EDIT_PATCH) {
        if (p.patch || e.pos == nullptr) {
            return LLAMA_REWIRE_ERR_EDIT;
        }
        std::vector<int32_t> pos(e.pos, e.pos + e.n);
        std::vector<int32_t> sorted = pos;
        std::sort(sorted.begin(), sorted.end());
        if (sorted.front() < 0 || std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
            return LLAMA_REWIRE_ERR_EDIT;
        }
        p.patch        = true;
        p.patch_pos    = std::move(pos);
        p.patch_values = std::move(values);
        return LLAMA_REWIRE_OK;
    }
    if (e.pos_begin < 0 || (e.pos_end >= 0 && e.pos_end <= e.pos_begin) || e.pos_end < -1) {
        return LLAMA_REWIRE_ERR_EDIT;
    }
    if (e.kind == LLAMA_REWIRE_EDIT_ABLATE) {
        if (p.ablate_n > 0) {
            return LLAMA_REWIRE_ERR_EDIT;
        }
        p.ablate_n     = e.n;
        p.ablate_dirs  = std::move(values);
        p.ablate_begin = e.pos_begin;
        p.ablate_end   = e.pos_end;
    } else {
        if (p.add) {
            return LLAMA_REWIRE_ERR_EDIT;
        }
        p.add        = true;
        p.add_values = std::move(values);
        p.add_begin  = e.pos_begin;
        p.add_end    = e.pos_end;
    }
    return LLAMA_REWIRE_OK;
}

// Same graph structure: the same taps and the same kinds of edit at the same places (values may differ).
static bool rewire_resid_same_structure(const std::vector<llama_rewire_place> & a, const std::vector<llama_rewire_place> & b) {
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].tapped != b[i].tapped || a[i].patch != b[i].patch || a[i].ablate_n != b[i].ablate_n || a[i].add != b[i].add) {
            return false;
        }
    }
    return true;
}

static int32_t rewire_resid_apply(llama_context & ctx, llama_rewire_state & state, std::vector<llama_rewire_place> next) {
    bool active = false;
    for (const llama_rewire_place & p : next) {
        active = active || p.tapped || p.edited();
    }
    const bool same = active == state.resid_active && rewire_resid_same_structure(next, state.resid);
    ctx.synchronize(); // a backend may still be reading the previous values' inputs
    if (same) {
        state.resid = std::move(next); // values only: the graphs stay, the next set_input reads them
        return LLAMA_REWIRE_OK;
    }
    std::vector<llama_rewire_place> prev = std::move(state.resid);
    const bool prev_active = state.resid_active;
    state.resid        = std::move(next);
    state.resid_active = active;
    llama_cparams & cparams = ctx.rewire_cparams();
    cparams.rewire_gen++;
    if (!ctx.rewire_reserve()) {
        state.resid        = std::move(prev);
        state.resid_active = prev_active;
        cparams.rewire_gen++;
        if (!ctx.rewire_reserve()) {
            LLAMA_LOG_ERROR("%s: failed to reserve the previous graph again\n", __func__);
        }
        return LLAMA_REWIRE_ERR_RESERVE;
    }
    return LLAMA_REWIRE_OK;
}

int32_t llama_rewire_edits_set(
        struct llama_context           * ctx,
        const struct llama_rewire_edit * edits,
        int32_t                          n_edits,
        int32_t                        * bad_edit) {
    if (bad_edit) {
        *bad_edit = -1;
    }
    llama_rewire_state * state = rewire_state_of(ctx);
    if (state == nullptr || n_edits < 0 || (n_edits > 0 && edits == nullptr)) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    try {
        std::vector<llama_rewire_place> next(state->resid.size());
        for (size_t i = 0; i < next.size(); ++i) {
            next[i].tapped = state->resid[i].tapped;
        }
        for (int32_t i = 0; i < n_edits; ++i) {
            const int32_t rc = rewire_edit_take(*ctx, *state, edits[i], next);
            if (rc != LLAMA_REWIRE_OK) {
                if (bad_edit) {
                    *bad_edit = i;
                }
                return rc;
            }
        }
        return rewire_resid_apply(*ctx, *state, std::move(next));
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, e.what());
        return LLAMA_REWIRE_ERR_RESERVE;
    }
}

int32_t llama_rewire_taps_set(struct llama_context * ctx, const uint32_t * taps, int32_t n_taps) {
    llama_rewire_state * state = rewire_state_of(ctx);
    if (state == nullptr || n_taps < 0 || (n_taps > 0 && taps == nullptr)) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    const int32_t n_layer = (int32_t) state->model.size();
    if (n_taps != 0 && n_taps != n_layer) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    for (int32_t il = 0; il < n_taps; ++il) {
        if (taps[il] >> LLAMA_REWIRE_POINT_COUNT) {
            return LLAMA_REWIRE_ERR_ARG;
        }
        for (int32_t point = 0; point < LLAMA_REWIRE_POINT_COUNT; ++point) {
            if ((taps[il] >> point & 1u) && rewire_point_width(ctx->get_model().hparams, *state, point, il) <= 0) {
                return LLAMA_REWIRE_ERR_POINT;
            }
        }
    }
    try {
        std::vector<llama_rewire_place> next = state->resid;
        for (int32_t il = 0; il < n_layer; ++il) {
            for (int32_t point = 0; point < LLAMA_REWIRE_POINT_COUNT; ++point) {
                next[(size_t) il * LLAMA_REWIRE_POINT_COUNT + point].tapped = n_taps != 0 && (taps[il] >> point & 1u);
            }
        }
        return rewire_resid_apply(*ctx, *state, std::move(next));
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, e.what());
        return LLAMA_REWIRE_ERR_RESERVE;
    }
}

int32_t llama_rewire_tap_read(
        struct llama_context * ctx,
        int32_t                point,
        int32_t                il,
        float                * out,
        int64_t                n_out,
        int64_t              * width,
        int32_t              * pos) {
    llama_rewire_state * state = rewire_state_of(ctx);
    if (state == nullptr || point < 0 || point >= LLAMA_REWIRE_POINT_COUNT) {
        return LLAMA_REWIRE_ERR_ARG;
    }
    if (il < 0 || (size_t) il >= state->model.size()) {
        return LLAMA_REWIRE_ERR_LAYER;
    }
    ctx->synchronize();
    for (const llama_rewire_tap_rec & rec : state->tap_last) {
        if (rec.point != point || rec.il != il) {
            continue;
        }
        const int64_t w    = rec.t->ne[0];
        const int64_t rows = ggml_nelements(rec.t) / w;
        if (width) {
            *width = w;
        }
        if (out != nullptr) {
            if (n_out < rows * w) {
                return LLAMA_REWIRE_ERR_ARG;
            }
            ggml_backend_tensor_get(rec.t, out, 0, (size_t) (rows * w) * sizeof(float));
        }
        if (pos != nullptr) {
            for (int64_t i = 0; i < rows; ++i) {
                pos[i] = rows == (int64_t) state->tap_pos.size() ? state->tap_pos[i] : -1;
            }
        }
        return (int32_t) rows;
    }
    return LLAMA_REWIRE_ERR_POINT;
}
