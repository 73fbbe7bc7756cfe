"""The native objects of a ``Llama``: the model (its metadata checked first) and its context."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import _core, _gguf_check, rpc
from .errors import ModelLoadError
from .rpc import RPCServerError


def open_model(path: str, a: dict[str, Any]) -> _core.Model:
    """Load the model of ``path`` with the checked constructor arguments ``a``.

    Hyperparameters llama.cpp would assert on are refused first, naming the key and the value; when
    llama.cpp refuses the file anyway, a full read of its metadata looks for a message that names the
    key (llama.cpp's own message is then the cause)."""
    overrides = dict(a["kv_overrides"] or {})
    given = f" (kv_overrides: {', '.join(map(repr, overrides))})" if overrides else ""
    if not a["vocab_only"]:  # a vocabulary-only load does not read the hyperparameters
        why = _gguf_check.check(path, overrides)
        if why is not None:
            raise ModelLoadError(f"failed to load model from file: {path}: {why}{given}")
    servers = a["rpc_servers"]
    if servers:
        rpc.connect(servers)
    try:
        model = _core.Model(
            path,
            n_gpu_layers=a["n_gpu_layers"],
            use_mmap=a["use_mmap"],
            use_mlock=a["use_mlock"],
            vocab_only=a["vocab_only"],
            main_gpu=a["main_gpu"],
            split_mode=a["split_mode"],
            tensor_split=list(a["tensor_split"] or []),
            kv_overrides=overrides,
            use_extra_bufts=a["use_extra_bufts"],
            rpc_servers=servers,
        )
    except BaseException as e:
        rpc.release(servers)
        if not isinstance(e, ModelLoadError):
            raise
        rpc.check_connected(servers)  # a load that failed because a server went away or misbehaved
        why = None if a["vocab_only"] else _gguf_check.explain(path, overrides)
        if why is None and not given:
            raise
        message = f"failed to load model from file: {path}: {why}" if why is not None else str(e)
        raise ModelLoadError(message + given) from e
    try:
        rpc.check_connected(servers)  # a model whose server went away while it loaded cannot run
    except RPCServerError:
        model.close()
        rpc.release(servers)
        raise
    return model


# llama_context_params fields that take the Llama argument of the same name as it is
_AS_GIVEN = ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast",
             "yarn_beta_slow", "yarn_orig_ctx", "pooling_type", "attention_type", "no_perf")


def given_context_params(a: Mapping[str, Any]) -> dict[str, Any]:
    """The context parameters the checked arguments ``a`` set directly: one mapping, for the load and for
    ``Llama.context_params``."""
    out = {name: a[name] for name in _AS_GIVEN}
    out["rope_scaling_type"] = -1 if a["rope_scaling_type"] is None else a["rope_scaling_type"]
    return out


def open_context(model: _core.Model, a: dict[str, Any]) -> _core.Context:
    """The inference context of ``model`` for the checked constructor arguments ``a`` (with its LoRA)."""
    n_ctx = a["n_ctx"] if a["n_ctx"] > 0 else model.n_ctx_train()
    n_parallel = 1 if a["embedding"] else a["n_parallel"]
    n_batch = min(a["n_batch"], n_ctx)
    n_ctx *= n_parallel  # a window per sequence (llama.cpp splits n_ctx among them)
    threads = a["n_threads"] if a["n_threads"] else max(1, (os.cpu_count() or 2) // 2)  # < 0: all cores
    extra = given_context_params(a)
    if a["op_offload"] is not None:
        extra["op_offload"] = a["op_offload"]
    if a["swa_full"] is not None:
        extra["swa_full"] = a["swa_full"]
    if a["embedding"]:
        extra["kv_unified"] = True  # several sequences per batch share the whole window
    try:
        ctx = _new_context(model, a, n_ctx, n_batch, threads, extra, n_parallel)
    except RuntimeError as e:
        if not any(m in str(e) for m in _OUT_OF_MEMORY):
            raise
        raise ContextMemoryError(
            f"the context does not fit in memory (n_ctx={n_ctx}, n_batch={n_batch}, n_ubatch="
            f"{min(a['n_ubatch'], n_batch)}, type_k={a['type_k']}, type_v={a['type_v']}): {e}") from None
    if a["lora_path"]:
        try:
            ctx.lora_add(a["lora_path"], a["lora_scale"])
        except ModelLoadError as e:
            ctx.close()
            raise ModelLoadError(f"lora_path: {e}") from None
        except BaseException:
            ctx.close()
            raise
    return ctx


_OUT_OF_MEMORY = ("insufficient memory", "failed to allocate", "unable to allocate", "bad_alloc",
                  "cannot allocate")


class ContextMemoryError(ValueError, MemoryError):
    """The context's buffers (KV cache, compute) for the requested sizes cannot be allocated."""


def _new_context(model: _core.Model, a: dict[str, Any], n_ctx: int, n_batch: int, threads: int,
                 extra: dict[str, Any], n_parallel: int) -> _core.Context:
    return _core.Context(
        model,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=min(a["n_ubatch"], n_batch),
        n_threads=threads,
        n_threads_batch=a["n_threads_batch"] or threads,
        type_k=-1 if a["type_k"] is None else a["type_k"],
        type_v=-1 if a["type_v"] is None else a["type_v"],
        flash_attn=1 if a["flash_attn"] else 0,
        embeddings=a["embedding"],
        offload_kqv=a["offload_kqv"],
        observe_ffn=a["observe_ffn"],
        eps=a["ffn_stats_eps"],
        n_seq_max=16 if a["embedding"] else n_parallel,
        extra=extra,
    )
