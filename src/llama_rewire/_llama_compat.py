"""The parts of llama-cpp-python's ``Llama`` that libraries read and that our runtime does not need.

``context_params`` and ``model_params`` (what the model and context were made with, read by attribute as
llama-cpp-python's ctypes structs are, e.g. llama-index's ``llm.context_params.n_ctx``), ``tokenizer()``,
``eval_tokens`` / ``eval_logits``, ``create_chat_completion_openai_v1``, ``from_pretrained`` and
pickling. :class:`LlamaCompat` reads the Llama through its public methods only.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core, _params
from ._load import given_context_params
from .llama_tokenizer import BaseLlamaTokenizer, LlamaTokenizer

# llama.h's enum values for the fields of the structs below
_FLASH_ATTN_DISABLED, _FLASH_ATTN_ENABLED = 0, 1
_NUMA_DISABLED, _NUMA_DISTRIBUTE = 0, 1
_GPU_LAYERS_ALL = 0x7FFFFFFF  # n_gpu_layers=-1


class LlamaParams(Mapping[str, Any]):
    """Read-only record of named parameters: ``p.n_ctx`` and ``p["n_ctx"]`` (the field names of
    llama.h's ``llama_context_params`` / ``llama_model_params``)."""

    def __init__(self, kind: str, fields: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name: str) -> Any:
        fields: dict[str, Any] = object.__getattribute__(self, "_fields")
        try:
            return fields[name]
        except KeyError:
            raise AttributeError(f"{self._kind} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._kind} is read-only: pass {name}=... to Llama(...) instead")

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"{self._kind}({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


def model_params(a: Mapping[str, Any]) -> LlamaParams:
    """The model's parameters, from the checked constructor arguments."""
    n_gpu = a["n_gpu_layers"]
    return LlamaParams("llama_model_params", {
        "n_gpu_layers": _GPU_LAYERS_ALL if n_gpu == -1 else n_gpu,
        "split_mode": a["split_mode"],
        "main_gpu": a["main_gpu"],
        "tensor_split": list(a["tensor_split"]) if a["tensor_split"] is not None else None,
        "kv_overrides": dict(a["kv_overrides"]) if a["kv_overrides"] is not None else None,
        "vocab_only": a["vocab_only"],
        "use_mmap": a["use_mmap"] and a["lora_path"] is None,
        "use_mlock": a["use_mlock"],
        "use_extra_bufts": a["use_extra_bufts"],
    })


def context_params(ctx: _core.Context | None, a: Mapping[str, Any]) -> LlamaParams:
    """The context's parameters: the arguments, with what llama.cpp chose (``ctx``, where there is one)
    for n_ctx=0, n_threads=None."""
    n_threads = a["n_threads"] if a["n_threads"] else max(1, (os.cpu_count() or 2) // 2)
    return LlamaParams("llama_context_params", {
        "n_ctx": ctx.n_ctx() if ctx is not None else a["n_ctx"],
        "n_batch": ctx.n_batch() if ctx is not None else a["n_batch"],
        "n_ubatch": ctx.n_ubatch() if ctx is not None else a["n_ubatch"],
        "n_seq_max": ctx.n_seq_max() if ctx is not None else 1,
        "n_threads": n_threads,
        "n_threads_batch": a["n_threads_batch"] or n_threads,
        **given_context_params(a),
        "flash_attn_type": _FLASH_ATTN_ENABLED if a["flash_attn"] else _FLASH_ATTN_DISABLED,
        "type_k": a["type_k"],
        "type_v": a["type_v"],
        "embeddings": a["embedding"],
        "offload_kqv": a["offload_kqv"],
        "op_offload": a["op_offload"],
        "swa_full": a["swa_full"],
        # not a llama.h field (logits are kept per output there): the Llama's own setting
        "logits_all": a["logits_all"],
    })


def set_attributes(llama: LlamaCompat, a: Mapping[str, Any]) -> None:
    """llama-cpp-python's attributes for the checked constructor arguments ``a``."""
    if not isinstance(a["numa"], (bool, int, np.integer)):
        raise TypeError(f"numa must be a bool or a ggml_numa_strategy value, got {type(a['numa']).__name__}")
    llama.model_params = model_params(a)
    llama.context_params = context_params(llama._ctx, a)
    llama.n_batch = min(a["n_ctx"], a["n_batch"]) if a["n_ctx"] else a["n_batch"]
    llama.n_threads = llama.context_params.n_threads
    llama.n_threads_batch = llama.context_params.n_threads_batch
    llama.tensor_split = a["tensor_split"]
    llama.kv_overrides = a["kv_overrides"]
    llama.lora_base, llama.lora_path, llama.lora_scale = a["lora_base"], a["lora_path"], a["lora_scale"]
    llama.numa = a["numa"] if isinstance(a["numa"], bool) else int(a["numa"])
    llama.spm_infill = _params.flag("spm_infill", a["spm_infill"])


class MinTokensLogitsProcessor:
    """A logits processor that rules out ``token_eos`` until ``min_tokens`` tokens were generated (the
    prompt is the input of its first call)."""

    def __init__(self, min_tokens: int, token_eos: int) -> None:
        self.min_tokens = min_tokens
        self.token_eos = token_eos
        self.prompt_tokens: int | None = None

    def __call__(
        self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if len(input_ids) - self.prompt_tokens < self.min_tokens:
            scores[self.token_eos] = -np.inf
        return scores


# the constructor arguments kept for pickling (a Llama is pickled as its arguments, as in
# llama-cpp-python, and loaded again when unpickled)
_NOT_PICKLED = ("self", "kwargs", "__class__")


def init_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k not in _NOT_PICKLED}


class LlamaCompat:
    """llama-cpp-python's ``Llama`` members that only read the Llama (mixed into ``Llama``)."""

    _init_args: dict[str, Any]
    _tokenizer: BaseLlamaTokenizer | None
    model_params: LlamaParams
    context_params: LlamaParams
    n_batch: int
    n_threads: int
    n_threads_batch: int
    tensor_split: list[float] | None
    kv_overrides: dict[str, bool | int | float | str] | None
    lora_base: str | None
    lora_path: str | None
    lora_scale: float
    numa: bool | int
    spm_infill: bool
    _ctx: _core.Context | None  # the Llama's

    @property
    def tokenizer_(self) -> BaseLlamaTokenizer:
        """The tokenizer ``tokenize`` / ``detokenize`` use: ``Llama(tokenizer=...)``, else the model's."""
        return self._tokenizer if self._tokenizer is not None else LlamaTokenizer(self)

    def tokenizer(self) -> LlamaTokenizer:
        """The model's own tokenizer (its GGUF vocabulary)."""
        return LlamaTokenizer(self)

    @property
    def eval_tokens(self) -> deque[int]:
        """The evaluated tokens (``input_ids[:n_tokens]``) as a deque of ``n_ctx`` at most."""
        llama: Any = self  # the Llama this is mixed into
        return deque(llama._input_ids.tolist(), maxlen=llama.n_ctx())

    @property
    def eval_logits(self) -> deque[list[float]]:
        """The logits of the evaluated tokens: all of them with ``logits_all``, else the last one's."""
        llama: Any = self  # the Llama this is mixed into
        if llama._logits_all:
            return deque(llama._scores.tolist(), maxlen=llama.n_ctx())
        rows = [llama.last_logits.tolist()] if llama.n_tokens else []
        return deque(rows, maxlen=1)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """``create_chat_completion`` as the openai package's types: a ``ChatCompletion``, or an iterator
        of ``ChatCompletionChunk`` with ``stream=True``. Needs the openai package."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package: "
                              "pip install openai") from None
        llama: Any = self  # the Llama this is mixed into
        result = llama.create_chat_completion(*args, **kwargs)
        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**chunk) for chunk in result)
        return ChatCompletion(**result)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._init_args)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str | None,
        additional_files: list[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        local_dir_use_symlinks: bool | str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Download a GGUF from a Hugging Face Hub repository and load it (needs huggingface-hub).

        ``filename`` (and each of ``additional_files``, e.g. the other shards of a split GGUF) is a file
        name or a glob pattern that must match exactly one file of the repository; ``kwargs`` go to
        ``Llama(...)``. A hub that cannot be reached raises ``ConnectionError``.
        """
        llama_class: Any = cls
        return llama_class(model_path=download_from_hub(repo_id, filename, additional_files, local_dir,
                                                        local_dir_use_symlinks, cache_dir), **kwargs)


def _one_match(repo_id: str, pattern: str, files: list[str]) -> str:
    found = [f for f in files if fnmatch.fnmatch(f, pattern)]
    if len(found) != 1:
        which = "No file" if not found else f"{len(found)} files ({', '.join(found[:8])})"
        raise ValueError(f"{which} in {repo_id} match {pattern!r}; the repository has: {', '.join(files)}")
    return found[0]


def download_from_hub(
    repo_id: str,
    filename: str | None,
    additional_files: list[str] | None,
    local_dir: str | os.PathLike[str] | None,
    local_dir_use_symlinks: bool | str,
    cache_dir: str | os.PathLike[str] | None,
) -> str:
    """The local path of the GGUF matching ``filename`` in ``repo_id``, downloaded with its additional
    files."""
    try:
        huggingface_hub: Any = importlib.import_module("huggingface_hub")
    except ImportError:
        raise ImportError("Llama.from_pretrained needs the huggingface-hub package: "
                          "pip install huggingface-hub") from None
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"repo_id must be a repository name such as 'org/model', got {repo_id!r}")
    if not isinstance(filename, str) or not filename:
        raise ValueError(f"filename must be a file name or glob pattern, got {filename!r}")
    try:
        files = [str(f) for f in huggingface_hub.list_repo_files(repo_id)]
    except Exception as e:  # offline, DNS, HTTP errors, a repository that does not exist
        raise ConnectionError(f"cannot list the files of {repo_id} on the Hugging Face Hub "
                              f"({type(e).__name__}: {e})") from e
    wanted = [_one_match(repo_id, filename, files)]
    wanted += [_one_match(repo_id, extra, files) for extra in additional_files or ()]
    paths = []
    for name in wanted:
        options: dict[str, Any] = {"local_dir": local_dir, "cache_dir": cache_dir}
        if local_dir is not None and local_dir_use_symlinks != "auto":
            options["local_dir_use_symlinks"] = local_dir_use_symlinks
        try:
            paths.append(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=name, **options))
        except Exception as e:
            raise ConnectionError(f"cannot download {name} from {repo_id} on the Hugging Face Hub "
                                  f"({type(e).__name__}: {e})") from e
    return str(Path(paths[0]))
