// llama-rewire: expression activations, a postfix program of ggml ops that every backend has.
#include "llama-rewire-graph.h"

#include <cmath>

#include "ggml.h"

// Stack effect (pops, pushes) and graph nodes of each op.
struct rewire_op_info {
    int pops;
    int nodes;
};

static rewire_op_info rewire_op_of(llama_rewire_op_type op) {
    switch (op) {
        case LLAMA_REWIRE_OP_X:    return {0, 0};
        case LLAMA_REWIRE_OP_DUP:  return {1, 0}; // pops one, pushes it twice
        case LLAMA_REWIRE_OP_ADD:
        case LLAMA_REWIRE_OP_SUB:
        case LLAMA_REWIRE_OP_MUL:
        case LLAMA_REWIRE_OP_DIV:  return {2, 1};
        case LLAMA_REWIRE_OP_MAX:
        case LLAMA_REWIRE_OP_MIN:  return {2, 3}; // sub, relu, add
        case LLAMA_REWIRE_OP_RDIV: return {1, 2}; // fill, div
        default:                   return {1, 1};
    }
}

int32_t llama_rewire_expr_check(const llama_rewire_op * expr, int32_t n_expr) {
    if (expr == nullptr || n_expr <= 0 || n_expr > LLAMA_REWIRE_EXPR_MAX_OPS) {
        return LLAMA_REWIRE_ERR_EXPR;
    }
    int  depth = 0;
    int  nodes = 0;
    bool has_x = false;
    for (int32_t i = 0; i < n_expr; ++i) {
        const llama_rewire_op & o = expr[i];
        if ((int) o.op < 0 || o.op >= LLAMA_REWIRE_OP_COUNT) {
            return LLAMA_REWIRE_ERR_EXPR;
        }
        const rewire_op_info info = rewire_op_of(o.op);
        if (depth < info.pops) {
            return LLAMA_REWIRE_ERR_EXPR;
        }
        depth += o.op == LLAMA_REWIRE_OP_DUP ? 1 : 1 - info.pops;
        nodes += info.nodes;
        has_x  = has_x || o.op == LLAMA_REWIRE_OP_X;
        if (depth > LLAMA_REWIRE_EXPR_MAX_STACK || nodes > LLAMA_REWIRE_EXPR_MAX_NODES) {
            return LLAMA_REWIRE_ERR_EXPR;
        }
        switch (o.op) {
            case LLAMA_REWIRE_OP_AFFINE:
            case LLAMA_REWIRE_OP_RDIV:
                if (!std::isfinite(o.a) || !std::isfinite(o.b)) {
                    return LLAMA_REWIRE_ERR_EXPR;
                }
                break;
            case LLAMA_REWIRE_OP_CLAMP:
                if (std::isnan(o.a) || std::isnan(o.b) || o.a > o.b) {
                    return LLAMA_REWIRE_ERR_EXPR;
                }
                break;
            default:
                break;
        }
    }
    return depth == 1 && has_x ? LLAMA_REWIRE_OK : LLAMA_REWIRE_ERR_EXPR;
}

static ggml_tensor * rewire_expr_unary(ggml_context * ctx, const llama_rewire_op & o, ggml_tensor * t) {
    switch (o.op) {
        case LLAMA_REWIRE_OP_AFFINE:   return ggml_scale_bias(ctx, t, o.a, o.b);
        case LLAMA_REWIRE_OP_RDIV:     return ggml_div(ctx, ggml_fill(ctx, t, o.a), t); // a / t
        case LLAMA_REWIRE_OP_CLAMP:    return ggml_clamp(ctx, t, o.a, o.b);
        case LLAMA_REWIRE_OP_SQR:      return ggml_sqr(ctx, t);
        case LLAMA_REWIRE_OP_SQRT:     return ggml_sqrt(ctx, t);
        case LLAMA_REWIRE_OP_EXP:      return ggml_exp(ctx, t);
        case LLAMA_REWIRE_OP_LOG:      return ggml_log(ctx, t);
        case LLAMA_REWIRE_OP_ABS:      return ggml_abs(ctx, t);
        case LLAMA_REWIRE_OP_NEG:      return ggml_neg(ctx, t);
        case LLAMA_REWIRE_OP_TANH:     return ggml_tanh(ctx, t);
        case LLAMA_REWIRE_OP_SIGMOID:  return ggml_sigmoid(ctx, t);
        case LLAMA_REWIRE_OP_RELU:     return ggml_relu(ctx, t);
        case LLAMA_REWIRE_OP_GELU:     return ggml_gelu(ctx, t);
        case LLAMA_REWIRE_OP_SILU:     return ggml_silu(ctx, t);
        case LLAMA_REWIRE_OP_SOFTPLUS: return ggml_softplus(ctx, t);
        case LLAMA_REWIRE_OP_SIN:      return ggml_sin(ctx, t);
        case LLAMA_REWIRE_OP_COS:      return ggml_cos(ctx, t);
        case LLAMA_REWIRE_OP_STEP:     return ggml_step(ctx, t);
        default:                       return nullptr; // not reached: checked before it is stored
    }
}

static ggml_tensor * rewire_expr_binary(ggml_context * ctx, llama_rewire_op_type op, ggml_tensor * l, ggml_tensor * r) {
    switch (op) {
        case LLAMA_REWIRE_OP_ADD: return ggml_add(ctx, l, r);
        case LLAMA_REWIRE_OP_SUB: return ggml_sub(ctx, l, r);
        case LLAMA_REWIRE_OP_MUL: return ggml_mul(ctx, l, r);
        case LLAMA_REWIRE_OP_DIV: return ggml_div(ctx, l, r);
        case LLAMA_REWIRE_OP_MAX: return ggml_add(ctx, r, ggml_relu(ctx, ggml_sub(ctx, l, r))); // r + relu(l - r)
        case LLAMA_REWIRE_OP_MIN: return ggml_sub(ctx, l, ggml_relu(ctx, ggml_sub(ctx, l, r))); // l - relu(l - r)
        default:                  return nullptr;
    }
}

ggml_tensor * llama_rewire_build_expr(ggml_context * ctx, const std::vector<llama_rewire_op> & expr, ggml_tensor * x, int il) {
    ggml_tensor * stack[LLAMA_REWIRE_EXPR_MAX_STACK];
    int depth = 0;
    for (size_t i = 0; i < expr.size(); ++i) {
        const llama_rewire_op & o = expr[i];
        const rewire_op_info info = rewire_op_of(o.op);
        if (o.op == LLAMA_REWIRE_OP_X) {
            stack[depth++] = x;
            continue;
        }
        if (o.op == LLAMA_REWIRE_OP_DUP) {
            stack[depth] = stack[depth - 1];
            depth++;
            continue;
        }
        ggml_tensor * t = info.pops == 2
            ? rewire_expr_binary(ctx, o.op, stack[depth - 2], stack[depth - 1])
            : rewire_expr_unary(ctx, o, stack[depth - 1]);
        depth -= info.pops;
        ggml_format_name(t, "ffn_rewire_expr%d-%d", (int) i, il);
        stack[depth++] = t;
    }
    return stack[0]; // the program was checked: one value is left
}
