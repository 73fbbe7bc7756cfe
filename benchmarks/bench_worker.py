"""One benchmark configuration, measured in its own process (run by ``bench.py``, not by hand).

It runs under the main Python (backend ``rewire``: ``llama_rewire.Llama``) or under the virtual
environment that holds llama-cpp-python (backend ``lcpp``: ``llama_cpp.Llama``), so it needs only the
standard library, numpy and the backend. It prints JSON on stdout.

Subcommands:

- ``throughput``: prompt processing (one ``eval`` of ``n_prompt`` tokens in ``n_batch`` batches, from an
  empty cache, as llama-bench's pp test) and generation (``n_gen`` greedy tokens after a short prompt,
  each a single-token decode, as llama-bench's tg test), ``reps`` times each after one warm-up.
- ``serve``: the same runs, one per request read from stdin (what bench.py uses).
- ``--edit steer``: the same runs with a control vector added to the residual stream after every layer,
  on every token (``set_steering``); ``--edit capture``: pp is ``capture`` of ``resid_post`` on every
  layer over the same tokens (tg has no edit); ``--logits-all``: pp keeps every position's logits.
- ``split``: where a generated token's time goes: inside the library's ``Llama.eval`` (llama_decode and
  the little around it) and outside it (sampling, the generator loop), over ``reps`` generation runs.
- ``switch`` (rewire only): the time from ``set_activations`` to the end of the first decode after it
  (one token, as a generation step), next to the same decode with no change and to loading a new ``Llama``
  with the activations and decoding that token.
- ``resid`` (rewire only): the costs of steering every layer (tg) and of a capture of resid_post on every
  layer (pp), each measured in pairs with its plain counterpart within one process.
- ``info`` (main Python): fetch a model by name and describe it.
- ``bandwidth``: the machine's read bandwidth (numpy), so that the parent process stays small: a child's
  peak RSS as the kernel reports it is at least its parent's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

TG_PROMPT = b"The quick brown fox"
TOKEN_SEED = 1234


# --------------------------------------------------------------------------- backends


class Backend:
    """The few calls both Llama classes share, plus greedy decoding by either path."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    def token_bos(self) -> int:
        return int(self.llm.token_bos())

    def tokenize(self, text: bytes) -> list[int]:
        return list(self.llm.tokenize(text, add_bos=True))

    def reset(self) -> None:
        self.llm.reset()

    def eval(self, tokens: Sequence[int]) -> None:
        self.llm.eval(tokens)

    def greedy(self, tokens: Sequence[int]) -> Iterator[int]:
        """Greedy tokens through the Llama's own ``generate`` (temperature 0)."""
        raise NotImplementedError

    def last_logits(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self.llm.close()


class RewireBackend(Backend):
    def greedy(self, tokens: Sequence[int]) -> Iterator[int]:
        return self.llm.generate(tokens, temperature=0.0)  # type: ignore[no-any-return]

    def last_logits(self) -> np.ndarray:
        return self.llm.last_logits  # type: ignore[no-any-return]


class LcppBackend(Backend):
    def greedy(self, tokens: Sequence[int]) -> Iterator[int]:
        return self.llm.generate(tokens, temp=0.0)  # type: ignore[no-any-return]

    def last_logits(self) -> np.ndarray:
        # without logits_all llama-cpp-python leaves `scores` empty: read llama.cpp's buffer
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab(),))


def open_backend(args: argparse.Namespace, activations: str | None = None) -> Backend:
    common = {
        "n_ctx": args.n_ctx,
        "n_batch": args.n_batch,
        "n_ubatch": args.n_batch,
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "n_gpu_layers": args.n_gpu_layers,
        "flash_attn": False,
        # sliding-window caches sized to the window, as llama-bench has them (both libraries default to
        # full-size ones, which keep prefix reuse exact but cost Gemma-3 about 5% of its prompt speed)
        "swa_full": False,
        "verbose": False,
    }
    if args.backend == "lcpp":
        if activations:
            raise SystemExit("llama-cpp-python has no activation overrides")
        if args.edit != "none" or args.logits_all:
            raise SystemExit("the residual-stream edits and --logits-all are measured on llama-rewire only")
        import llama_cpp

        if args.no_repack:
            # llama-cpp-python 0.3.36's Llama has no keyword for it: it reads the default model params
            defaults = llama_cpp.llama_cpp.llama_model_default_params

            def plain_params() -> Any:
                params = defaults()
                params.use_extra_bufts = False
                return params

            llama_cpp.llama_cpp.llama_model_default_params = plain_params
        return LcppBackend(llama_cpp.Llama(model_path=args.model, **common))
    from llama_rewire import Llama

    if args.logits_all:
        common["logits_all"] = True
    return RewireBackend(Llama(args.model, wiring=activations or None,
                               use_extra_bufts=not args.no_repack, **common))


# --------------------------------------------------------------------------- measurements


def prompt_tokens(backend: Backend, n: int) -> list[int]:
    """n random token ids (the same for both backends), starting with BOS where the model has one."""
    rng = np.random.default_rng(TOKEN_SEED)
    tokens = [int(t) for t in rng.integers(0, backend.n_vocab(), size=n)]
    if backend.token_bos() >= 0:
        tokens[0] = backend.token_bos()
    return tokens


def time_prompt(backend: Backend, tokens: list[int]) -> float:
    """Seconds to evaluate tokens from an empty cache."""
    backend.reset()
    t0 = time.perf_counter()
    backend.eval(tokens)
    return time.perf_counter() - t0


def time_generation(
    backend: Backend, prompt: list[int], n_gen: int, method: str, on_start: Callable[[], None] | None = None
) -> float:
    """Seconds for n_gen single-token decodes with greedy choice, after evaluating prompt (untimed;
    on_start is called when the timed part starts). Method ``generate``: the Llama's generate loop;
    ``eval``: eval + numpy argmax; ``decode``: llama-bench's loop, with no choice at all."""
    backend.reset()
    if method == "generate":
        tokens = backend.greedy(prompt)
        next(tokens)  # evaluates the prompt and picks the first token
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        for _ in range(n_gen):
            next(tokens)  # decodes the previous token, picks the next
        elapsed = time.perf_counter() - t0
        tokens.close()  # type: ignore[attr-defined]
        return elapsed
    if method == "decode":
        # llama-bench's own loop: from an empty cache, the BOS token and then random ones, one per
        # eval, nothing sampled or read back (the prompt is not used)
        toks = prompt_tokens(backend, n_gen)
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        for t in toks:
            backend.eval([t])
        return time.perf_counter() - t0
    backend.eval(prompt)
    token = int(np.argmax(backend.last_logits()))
    if on_start is not None:
        on_start()
    t0 = time.perf_counter()
    for _ in range(n_gen):
        backend.eval([token])
        token = int(np.argmax(backend.last_logits()))
    return time.perf_counter() - t0


def every_layer_vector(llm: Any) -> Any:
    """A control vector with a direction for every layer (random: the cost of an addition does not
    depend on the values)."""
    from llama_rewire.residual import ControlVector

    rng = np.random.default_rng(TOKEN_SEED)
    n_embd = llm.n_embd()
    return ControlVector({il: (0.05 * rng.standard_normal(n_embd)).astype(np.float32)
                          for il in range(llm.n_layer())})


def steer_every_layer(llm: Any) -> None:
    """The control vector of every_layer_vector, added at every position."""
    llm.set_steering(every_layer_vector(llm), alpha=1.0, tokens="all")


def time_capture(backend: Backend, tokens: list[int]) -> float:
    """Seconds for ``capture`` of resid_post on every layer over tokens (from an empty cache)."""
    backend.reset()
    t0 = time.perf_counter()
    out = backend.llm.capture(tokens, taps="resid_post")["resid_post"]
    elapsed = time.perf_counter() - t0
    assert out.shape[:2] == (backend.llm.n_layer(), len(tokens))
    return elapsed


class Bench:
    """One configuration, loaded and warmed up; each call times one run and returns tokens/s."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.n_prompt, self.n_gen, self.method = int(args.n_prompt), int(args.n_gen), str(args.tg_method)
        self.backend = open_backend(args, args.act)
        self.edit = str(args.edit)
        if self.edit == "steer":
            steer_every_layer(self.backend.llm)
        self.pp_tokens = prompt_tokens(self.backend, self.n_prompt)
        self.tg_prompt = self.backend.tokenize(TG_PROMPT)
        # warm-up: one prompt and a few generated tokens (llama-bench warms up the same way)
        self.pp()
        time_generation(self.backend, self.tg_prompt, 4, self.method)

    def pp(self) -> float:
        if self.edit == "capture":
            return self.n_prompt / time_capture(self.backend, self.pp_tokens)
        return self.n_prompt / time_prompt(self.backend, self.pp_tokens)

    def tg(self) -> float:
        return self.n_gen / time_generation(self.backend, self.tg_prompt, self.n_gen, self.method)

    def close(self) -> None:
        self.backend.close()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """reps pp runs, then reps tg runs."""
    bench = Bench(args)
    pp = [bench.pp() for _ in range(args.reps)]
    tg = [bench.tg() for _ in range(args.reps)]
    bench.close()
    return {"pp_ts": pp, "tg_ts": tg}


def serve(args: argparse.Namespace) -> None:
    """Answer the lines 'pp' and 'tg' on stdin with one JSON line each ({"pp": tokens/s}), until 'quit'
    or the end of stdin. Each round, bench.py starts one such process per configuration and asks them
    in turn, so that slow drifts of the machine's speed hit every configuration alike."""
    bench = Bench(args)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what not in ("pp", "tg"):
            raise SystemExit(f"unknown request {what!r}")
        print(json.dumps({what: bench.pp() if what == "pp" else bench.tg()}), flush=True)
    bench.close()


def resid(args: argparse.Namespace) -> dict[str, Any]:
    """The residual-stream costs measured in pairs within one process (rewire only): tg with and
    without steering on every layer, and pp as a plain eval and as a capture of resid_post on every
    layer, each pair in a seeded random order. Steering is set or removed before the generation's
    prompt is evaluated (untimed), so a change of graph is not in the timed part; a capture's own
    setting of its taps is (a caller pays it on every capture)."""
    import random

    if args.backend != "rewire":
        raise SystemExit("resid measures llama-rewire only")
    backend = open_backend(args)
    llm = backend.llm
    vector = every_layer_vector(llm)
    pp_tokens = prompt_tokens(backend, args.n_prompt)
    tg_prompt = backend.tokenize(TG_PROMPT)

    def tg(steer: bool) -> float:
        llm.set_steering(vector if steer else None, alpha=1.0, tokens="all")
        return args.n_gen / time_generation(backend, tg_prompt, args.n_gen, args.tg_method)

    def pp(capture: bool) -> float:
        if capture:
            return args.n_prompt / time_capture(backend, pp_tokens)
        backend.reset()
        backend.eval(pp_tokens[:1])  # untimed: a graph change after a capture is reserved here
        return args.n_prompt / time_prompt(backend, pp_tokens)

    for on in (True, False):  # warm-up
        tg(on)
        pp(on)
    out: dict[str, list[float]] = {"tg_plain": [], "tg_steer": [], "pp_plain": [], "pp_capture": []}
    order = random.Random(TOKEN_SEED)
    for _ in range(args.reps):
        for run, names in ((tg, ("tg_plain", "tg_steer")), (pp, ("pp_plain", "pp_capture"))):
            pair = [False, True]
            order.shuffle(pair)
            for on in pair:
                out[names[on]].append(run(on))
    llm.set_steering(None)
    backend.close()
    return out


def split(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds per generated token: in all, and inside ``Llama.eval`` (the instance's eval is
    wrapped by a timer; both libraries' generate loops call it once per token)."""
    backend = open_backend(args, args.act)
    llm = backend.llm
    inner = llm.eval
    spent = [0.0]

    def timed_eval(tokens: Sequence[int]) -> None:
        t0 = time.perf_counter()
        inner(tokens)
        spent[0] += time.perf_counter() - t0

    llm.eval = timed_eval
    prompt = backend.tokenize(TG_PROMPT)
    time_generation(backend, prompt, 4, "generate")  # warm-up

    def restart() -> None:
        spent[0] = 0.0

    total_ms, eval_ms = [], []
    for _ in range(args.reps):
        elapsed = time_generation(backend, prompt, args.n_gen, "generate", on_start=restart)
        total_ms.append(elapsed / args.n_gen * 1e3)
        eval_ms.append(spent[0] / args.n_gen * 1e3)
    backend.close()
    return {"total_ms": total_ms, "eval_ms": eval_ms}


def switch(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds: set_activations alone, set_activations + the first decode after it, the same
    decode with no change, and a new Llama with the activations + that decode. A decode is one token
    (the changed wiring drops the cache, so it starts at position 0) and its argmax."""
    if args.backend != "rewire":
        raise SystemExit("switch measures llama-rewire only")
    backend = open_backend(args)
    llm = backend.llm
    prompt = backend.tokenize(TG_PROMPT)[:1]

    def first_token(b: Backend) -> int:
        b.eval(prompt)
        return int(np.argmax(b.last_logits()))

    for spec in (args.act, None, args.act, None):  # warm-up, both wirings
        llm.set_activations(spec)
        first_token(backend)
    set_ms, switch_ms, plain_ms, reload_ms = [], [], [], []
    for _ in range(args.reps):
        for spec in (args.act, None):  # each call is a real change of wiring
            t0 = time.perf_counter()
            llm.set_activations(spec)
            t1 = time.perf_counter()
            first_token(backend)
            t2 = time.perf_counter()
            set_ms.append((t1 - t0) * 1e3)
            switch_ms.append((t2 - t0) * 1e3)
        backend.reset()
        t0 = time.perf_counter()
        first_token(backend)
        plain_ms.append((time.perf_counter() - t0) * 1e3)
    for _ in range(args.reload_reps):
        t0 = time.perf_counter()
        fresh = open_backend(args, args.act)
        first_token(fresh)
        reload_ms.append((time.perf_counter() - t0) * 1e3)
        fresh.close()
    backend.close()
    return {
        "set_ms": set_ms,
        "switch_ms": switch_ms,
        "plain_ms": plain_ms,
        "reload_ms": reload_ms,
    }


def info(args: argparse.Namespace) -> dict[str, Any]:
    """Fetch a model by name (or take a GGUF path); its path, description, weight bytes, parameters and
    FFN activation."""
    from pathlib import Path

    from llama_rewire import Llama, system_info
    from llama_rewire.models import fetch, get_spec

    given = Path(args.model)
    path = given if given.suffix == ".gguf" and given.is_file() else fetch(args.model)
    with Llama(str(path), n_ctx=64, n_threads=args.threads, verbose=False) as llm:
        if path is given:
            description = f"{path.stem} ({llm.model.desc()})"
        else:
            description = get_spec(args.model).description
        return {
            "path": str(path),
            "description": description,
            "size": int(llm.model.size()),
            "n_params": int(llm.model.n_params()),
            "native_act": str(llm.describe_ffn()[0]["act"]),
            "n_layer": llm.n_layer(),
            "weight_buffers": llm.weight_buffers(),
            "devices": system_info()["devices"],
        }


def bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    """Best-of-N read bandwidth in GB/s: `threads` threads each summing a slice of a large array
    (numpy releases the GIL in reductions)."""
    data = np.ones(args.mib * (1 << 20) // 8)
    chunks = np.array_split(data, args.threads)
    best = float("inf")
    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.tries):
            t0 = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - t0)
    return {"gbps": data.nbytes / best / 1e9, "mib": args.mib, "tries": args.tries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name, func in (("throughput", throughput), ("serve", serve), ("split", split), ("switch", switch),
                       ("resid", resid)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--backend", choices=["rewire", "lcpp"], required=True)
        p.add_argument("--model", required=True, help="a GGUF path")
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--act", default=None, help="wiring spec: activations, skips... (rewire only)")
        p.add_argument("--no-repack", action="store_true",
                       help="weights as stored: no AMX / CPU_REPACK buffers (use_extra_bufts=False)")
        p.add_argument("--reps", type=int, default=5)
        p.add_argument("--reload-reps", type=int, default=3)
        p.add_argument("--n-prompt", type=int, default=512)
        p.add_argument("--n-gen", type=int, default=128)
        p.add_argument("--n-batch", type=int, default=512)
        p.add_argument("--n-ctx", type=int, default=640)
        p.add_argument("--tg-method", choices=["generate", "eval", "decode"], default="generate")
        p.add_argument("--edit", choices=["none", "steer", "capture"], default="none",
                       help="steer: a control vector on every layer and token; capture: pp is a capture "
                            "of resid_post on every layer (rewire only)")
        p.add_argument("--logits-all", action="store_true", help="keep every position's logits (rewire only)")
        p.add_argument("--n-gpu-layers", type=int, default=0,
                       help="layers offloaded to a GPU backend (-1: all, and the output; 0: CPU only)")
    p = sub.add_parser("info")
    p.set_defaults(func=info)
    p.add_argument("--model", required=True, help="a model name known to llama_rewire.models, or a GGUF path")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("bandwidth")
    p.set_defaults(func=bandwidth)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--tries", type=int, default=7)
    args = parser.parse_args(argv)
    result = args.func(args)
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
