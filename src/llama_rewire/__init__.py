"""llama-rewire: run GGUF models with their FFN activation functions rewired, per layer.

    from llama_rewire import Llama
    llm = Llama("model.gguf", activations="0-11:relu, *:gelu")
    print(llm("The capital of France is", max_tokens=16)["choices"][0]["text"])

The high-level names of llama-cpp-python are here too, so ``import llama_rewire as llama_cpp`` runs code
written for ``llama_cpp.Llama``; after :func:`install_as_llama_cpp`, ``import llama_cpp`` and its submodules
(``llama_cpp.llama_chat_format``, ``llama_cpp.llama_cpp``, ...) resolve to llama-rewire's. The names of the
low-level C API (``llama_cpp.llama_batch_init``, ...) are looked up in :mod:`llama_rewire.llama_cpp`, which is
imported when one of them is first asked for.

Where things are (lower layers first; nothing imports a layer above its own):

=======================  ==================================================================================
module                   what it holds
=======================  ==================================================================================
``_core``                the native extension: llama.cpp's model, context, sampler, the rewiring calls
``engine``               on the native handles: ``Sequence`` (one sequence of a context: its tokens, KV
                         cache, logits, prefix reuse, rollback), ``SamplingParams``, the sampling step,
                         the vocabulary's tokenize / detokenize
``generate``             token loops over a ``Sequence``: plain steps, speculative decoding
``wiring``               the wiring spec language and its value, activations and expressions, profiles,
                         layouts, FFN statistics, and the controller a ``Llama`` holds
``residual``             edits (steer, ablate, patch), control vectors, CAA, the logit lens, and the
                         controller a ``Llama`` holds
``_completion``          completion runs: stop strings, logprobs, streamed chunks
``_slots``               parallel slots: continuous batching of several sequences
``_chat``, ``chat_*``    chat: the GGUF's own template (llama.cpp's Jinja engine), the named formats, tools
``_params``, ``_guard``  argument checks; one call at a time on a ``Llama``
``llama``                ``Llama``: the front that holds a context, its ``Sequence`` and the controllers
``llama_*``              llama-cpp-python's module names, and (``_llama_compat``, ``_internals``...) the
                         members of theirs that libraries read: the drop-in face
``eval``                 perplexity, original-vs-rewired comparison, sweeps, pruning, calibrated sparsity
``cli``, ``server``      the ``llama-rewire`` command and the OpenAI-compatible server
=======================  ==================================================================================
"""

from __future__ import annotations

from . import (
    _backends,  # noqa: F401  (first: loads the backend modules of the portable build)
    llama_cache,
    llama_chat_format,
    llama_grammar,
    llama_speculative,
    llama_tokenizer,
    llama_types,
)
from ._alias import install_as_llama_cpp
from ._core import (
    GGML_TYPE_BF16,
    GGML_TYPE_F16,
    GGML_TYPE_F32,
    GGML_TYPE_IQ4_NL,
    GGML_TYPE_Q2_K,
    GGML_TYPE_Q3_K,
    GGML_TYPE_Q4_0,
    GGML_TYPE_Q4_1,
    GGML_TYPE_Q4_K,
    GGML_TYPE_Q5_0,
    GGML_TYPE_Q5_1,
    GGML_TYPE_Q5_K,
    GGML_TYPE_Q6_K,
    GGML_TYPE_Q8_0,
    LLAMA_ATTENTION_TYPE_CAUSAL,
    LLAMA_ATTENTION_TYPE_NON_CAUSAL,
    LLAMA_ATTENTION_TYPE_UNSPECIFIED,
    LLAMA_FLASH_ATTN_TYPE_AUTO,
    LLAMA_FLASH_ATTN_TYPE_DISABLED,
    LLAMA_FLASH_ATTN_TYPE_ENABLED,
    LLAMA_POOLING_TYPE_CLS,
    LLAMA_POOLING_TYPE_LAST,
    LLAMA_POOLING_TYPE_MEAN,
    LLAMA_POOLING_TYPE_NONE,
    LLAMA_POOLING_TYPE_RANK,
    LLAMA_POOLING_TYPE_UNSPECIFIED,
    LLAMA_ROPE_SCALING_TYPE_LINEAR,
    LLAMA_ROPE_SCALING_TYPE_LONGROPE,
    LLAMA_ROPE_SCALING_TYPE_NONE,
    LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    LLAMA_ROPE_SCALING_TYPE_YARN,
    LLAMA_SPLIT_MODE_LAYER,
    LLAMA_SPLIT_MODE_NONE,
    LLAMA_SPLIT_MODE_ROW,
    LLAMA_VOCAB_TYPE_BPE,
    LLAMA_VOCAB_TYPE_NONE,
    LLAMA_VOCAB_TYPE_RWKV,
    LLAMA_VOCAB_TYPE_SPM,
    LLAMA_VOCAB_TYPE_UGM,
    LLAMA_VOCAB_TYPE_WPM,
)
from ._logger import set_verbose
from ._utils import suppress_stdout_stderr
from .errors import (
    ActivationSpecError,
    ChatFormatError,
    ClosedError,
    ContextOverflowError,
    DecodeError,
    ExpressionError,
    GrammarError,
    ModelLoadError,
    WiringSpecError,
)
from .llama import (
    LLAMA_DEFAULT_SEED,
    Llama,
    LogitsProcessor,
    LogitsProcessorList,
    MinTokensLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)
from .llama_cache import BaseLlamaCache, LlamaCache, LlamaDiskCache, LlamaRAMCache, LlamaState
from .llama_grammar import LlamaGrammar
from .llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from .llama_tokenizer import BaseLlamaTokenizer, LlamaHFTokenizer, LlamaTokenizer
from .llama_types import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionChunkDelta,
    ChatCompletionChunkDeltaEmpty,
    ChatCompletionFunction,
    ChatCompletionFunctionCall,
    ChatCompletionFunctionCallOption,
    ChatCompletionFunctionParameters,
    ChatCompletionFunctions,
    ChatCompletionLogprobs,
    ChatCompletionLogprobToken,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionMessageToolCallChunk,
    ChatCompletionMessageToolCallChunkFunction,
    ChatCompletionMessageToolCallFunction,
    ChatCompletionMessageToolCalls,
    ChatCompletionNamedToolChoice,
    ChatCompletionNamedToolChoiceFunction,
    ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageFunctionCall,
    ChatCompletionRequestFunctionCall,
    ChatCompletionRequestFunctionCallOption,
    ChatCompletionRequestFunctionMessage,
    ChatCompletionRequestMessage,
    ChatCompletionRequestMessageContentPart,
    ChatCompletionRequestMessageContentPartImage,
    ChatCompletionRequestMessageContentPartImageImageUrl,
    ChatCompletionRequestMessageContentPartText,
    ChatCompletionRequestResponseFormat,
    ChatCompletionRequestResponseFormatJsonSchema,
    ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage,
    ChatCompletionRequestUserMessage,
    ChatCompletionResponseChoice,
    ChatCompletionResponseFunction,
    ChatCompletionResponseFunctionCall,
    ChatCompletionResponseMessage,
    ChatCompletionStreamResponse,
    ChatCompletionStreamResponseChoice,
    ChatCompletionStreamResponseDelta,
    ChatCompletionStreamResponseDeltaEmpty,
    ChatCompletionStreamResponseDeltaFunctionCall,
    ChatCompletionTool,
    ChatCompletionToolChoiceOption,
    ChatCompletionToolFunction,
    ChatCompletionTopLogprobToken,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionUsage,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    CreateCompletionResponse,
    CreateCompletionStreamResponse,
    CreateEmbeddingResponse,
    Embedding,
    EmbeddingData,
    EmbeddingUsage,
    JsonType,
)
from .system import system_info
from .wiring import (
    Activation,
    LayerInfo,
    LayerWiring,
    Wiring,
    format_table,
    parse,
    parse_activation,
    parse_wiring,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """The low-level C API's names (``llama_cpp.llama_decode``, ``llama_cpp.llama_batch``, ...), as
    llama-cpp-python's package has them at its top level: from :mod:`llama_rewire.llama_cpp`, imported on
    first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    try:  # also sets this package's llama_cpp attribute
        capi = importlib.import_module(".llama_cpp", __name__)
    except Exception as e:  # hasattr() and getattr(..., default) expect AttributeError
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (the C API module "
                             f"llama_rewire.llama_cpp did not import: {type(e).__name__}: {e})") from e
    if name == "llama_cpp":
        return capi
    try:
        return getattr(capi, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

__all__ = [
    "GGML_TYPE_BF16",
    "GGML_TYPE_F16",
    "GGML_TYPE_F32",
    "GGML_TYPE_IQ4_NL",
    "GGML_TYPE_Q2_K",
    "GGML_TYPE_Q3_K",
    "GGML_TYPE_Q4_0",
    "GGML_TYPE_Q4_1",
    "GGML_TYPE_Q4_K",
    "GGML_TYPE_Q5_0",
    "GGML_TYPE_Q5_1",
    "GGML_TYPE_Q5_K",
    "GGML_TYPE_Q6_K",
    "GGML_TYPE_Q8_0",
    "LLAMA_ATTENTION_TYPE_CAUSAL",
    "LLAMA_ATTENTION_TYPE_NON_CAUSAL",
    "LLAMA_ATTENTION_TYPE_UNSPECIFIED",
    "LLAMA_DEFAULT_SEED",
    "LLAMA_FLASH_ATTN_TYPE_AUTO",
    "LLAMA_FLASH_ATTN_TYPE_DISABLED",
    "LLAMA_FLASH_ATTN_TYPE_ENABLED",
    "LLAMA_POOLING_TYPE_CLS",
    "LLAMA_POOLING_TYPE_LAST",
    "LLAMA_POOLING_TYPE_MEAN",
    "LLAMA_POOLING_TYPE_NONE",
    "LLAMA_POOLING_TYPE_RANK",
    "LLAMA_POOLING_TYPE_UNSPECIFIED",
    "LLAMA_ROPE_SCALING_TYPE_LINEAR",
    "LLAMA_ROPE_SCALING_TYPE_LONGROPE",
    "LLAMA_ROPE_SCALING_TYPE_NONE",
    "LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED",
    "LLAMA_ROPE_SCALING_TYPE_YARN",
    "LLAMA_SPLIT_MODE_LAYER",
    "LLAMA_SPLIT_MODE_NONE",
    "LLAMA_SPLIT_MODE_ROW",
    "LLAMA_VOCAB_TYPE_BPE",
    "LLAMA_VOCAB_TYPE_NONE",
    "LLAMA_VOCAB_TYPE_RWKV",
    "LLAMA_VOCAB_TYPE_SPM",
    "LLAMA_VOCAB_TYPE_UGM",
    "LLAMA_VOCAB_TYPE_WPM",
    "Activation",
    "ActivationSpecError",
    "BaseLlamaCache",
    "BaseLlamaTokenizer",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionChunkDelta",
    "ChatCompletionChunkDeltaEmpty",
    "ChatCompletionFunction",
    "ChatCompletionFunctionCall",
    "ChatCompletionFunctionCallOption",
    "ChatCompletionFunctionParameters",
    "ChatCompletionFunctions",
    "ChatCompletionLogprobToken",
    "ChatCompletionLogprobs",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "ChatCompletionMessageToolCallChunk",
    "ChatCompletionMessageToolCallChunkFunction",
    "ChatCompletionMessageToolCallFunction",
    "ChatCompletionMessageToolCalls",
    "ChatCompletionNamedToolChoice",
    "ChatCompletionNamedToolChoiceFunction",
    "ChatCompletionRequestAssistantMessage",
    "ChatCompletionRequestAssistantMessageFunctionCall",
    "ChatCompletionRequestFunctionCall",
    "ChatCompletionRequestFunctionCallOption",
    "ChatCompletionRequestFunctionMessage",
    "ChatCompletionRequestMessage",
    "ChatCompletionRequestMessageContentPart",
    "ChatCompletionRequestMessageContentPartImage",
    "ChatCompletionRequestMessageContentPartImageImageUrl",
    "ChatCompletionRequestMessageContentPartText",
    "ChatCompletionRequestResponseFormat",
    "ChatCompletionRequestResponseFormatJsonSchema",
    "ChatCompletionRequestSystemMessage",
    "ChatCompletionRequestToolMessage",
    "ChatCompletionRequestUserMessage",
    "ChatCompletionResponseChoice",
    "ChatCompletionResponseFunction",
    "ChatCompletionResponseFunctionCall",
    "ChatCompletionResponseMessage",
    "ChatCompletionStreamResponse",
    "ChatCompletionStreamResponseChoice",
    "ChatCompletionStreamResponseDelta",
    "ChatCompletionStreamResponseDeltaEmpty",
    "ChatCompletionStreamResponseDeltaFunctionCall",
    "ChatCompletionTool",
    "ChatCompletionToolChoiceOption",
    "ChatCompletionToolFunction",
    "ChatCompletionTopLogprobToken",
    "ChatFormatError",
    "ClosedError",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionUsage",
    "ContextOverflowError",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "DecodeError",
    "Embedding",
    "EmbeddingData",
    "EmbeddingUsage",
    "ExpressionError",
    "GrammarError",
    "JsonType",
    "LayerInfo",
    "LayerWiring",
    "Llama",
    "LlamaCache",
    "LlamaDiskCache",
    "LlamaDraftModel",
    "LlamaGrammar",
    "LlamaHFTokenizer",
    "LlamaPromptLookupDecoding",
    "LlamaRAMCache",
    "LlamaState",
    "LlamaTokenizer",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinTokensLogitsProcessor",
    "ModelLoadError",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "Wiring",
    "WiringSpecError",
    "__version__",
    "format_table",
    "install_as_llama_cpp",
    "llama_cache",
    "llama_chat_format",
    "llama_grammar",
    "llama_speculative",
    "llama_tokenizer",
    "llama_types",
    "parse",
    "parse_activation",
    "parse_wiring",
    "set_verbose",
    "suppress_stdout_stderr",
    "system_info",
]
