"""Prompt caches: saved context states looked up by the longest shared token prefix.

Shaped like llama-cpp-python's ``LlamaRAMCache`` / ``LlamaDiskCache``: ``Llama.set_cache(cache)`` makes
each completion start from the cached state that shares the longest prefix with its prompt, and save
its own state afterwards. A cache belongs to one model and one wiring: ``set_wiring`` (and
``set_activations``) clears it.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._params import integer
from .engine.sequence import prefix_len


@dataclass
class LlamaState:
    """What ``Llama.save_state`` captures: the evaluated tokens, their logits and the native state."""

    input_ids: npt.NDArray[np.intc]
    scores: npt.NDArray[np.single]
    n_tokens: int
    llama_state: bytes
    llama_state_size: int
    seed: int
    rng_state: object = None

    def nbytes(self) -> int:
        return int(self.input_ids.nbytes + self.scores.nbytes + len(self.llama_state))


def checked_state(state: LlamaState, capacity: int, n_vocab: int, logits_all: bool
                  ) -> tuple[int, npt.NDArray[np.intc], npt.NDArray[np.single], bytes]:
    """``state``'s token count, token ids, logits and native bytes, once they fit a context of ``capacity``
    tokens over ``n_vocab`` (logits for every token where ``logits_all``, else the last row if any).

    A state is also built by hand or unpickled; numpy would broadcast a short ``input_ids`` into place and
    fail half-way through a load on sizes it cannot broadcast, after the native state was replaced."""
    if not isinstance(state, LlamaState):
        raise TypeError(f"load_state takes a LlamaState, got {type(state).__name__}")
    n = integer("LlamaState.n_tokens", state.n_tokens, 0, capacity)
    data = state.llama_state
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"LlamaState.llama_state must be bytes, got {type(data).__name__}")
    ids = np.asarray(state.input_ids)
    if ids.ndim != 1 or len(ids) < n or (n and ids.dtype.kind not in "iu"):
        raise ValueError(f"LlamaState.input_ids must hold n_tokens={n} token ids, got shape {ids.shape} "
                         f"of {ids.dtype}")
    if n and (int(ids[:n].min()) < 0 or int(ids[:n].max()) >= n_vocab):
        raise ValueError(f"LlamaState.input_ids holds token ids out of range [0, {n_vocab})")
    scores = np.asarray(state.scores)
    rows = n if logits_all else 0  # without logits_all, the last row where the state has one
    wrong = scores.ndim != 2 or scores.shape[1] != n_vocab or len(scores) < rows
    if (rows or (n and scores.size)) and wrong:
        raise ValueError(f"LlamaState.scores must hold {rows} rows of {n_vocab} logits, got shape "
                         f"{scores.shape}")
    return n, ids[:n].astype(np.intc), scores.astype(np.single, copy=False), bytes(data)


class BaseLlamaCache(ABC):
    """A map from token sequences to states, bounded by ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = capacity_bytes

    @property
    @abstractmethod
    def cache_size(self) -> int: ...

    @abstractmethod
    def _keys(self) -> list[tuple[int, ...]]: ...

    @abstractmethod
    def __getitem__(self, key: Sequence[int]) -> LlamaState: ...

    @abstractmethod
    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...

    def _find_longest_prefix_key(self, key: Sequence[int]) -> tuple[int, ...] | None:
        best, best_len = None, 0
        for k in self._keys():
            n = prefix_len(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(key)) is not None


class LlamaRAMCache(BaseLlamaCache):
    """States kept in memory, least recently used evicted first."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[tuple[int, ...], LlamaState] = OrderedDict()

    @property
    def cache_size(self) -> int:
        return sum(s.nbytes() for s in self.cache_state.values())

    def _keys(self) -> list[tuple[int, ...]]:
        return list(self.cache_state)

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        k = self._find_longest_prefix_key(tuple(key))
        if k is None:
            raise KeyError("no cached state shares a prefix with the key")
        self.cache_state.move_to_end(k)
        return self.cache_state[k]

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(key)
        self.cache_state.pop(k, None)
        self.cache_state[k] = value
        while self.cache_size > self.capacity_bytes and len(self.cache_state) > 1:
            self.cache_state.popitem(last=False)

    def clear(self) -> None:
        self.cache_state.clear()


LlamaCache = LlamaRAMCache


class LlamaDiskCache(BaseLlamaCache):
    """States pickled into a directory (one file each, with an index), oldest evicted first."""

    def __init__(self, cache_dir: str = ".cache/llama_rewire", capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._index_path = self.cache_dir / "index.pkl"
        self._index: OrderedDict[tuple[int, ...], str] = OrderedDict()
        if self._index_path.exists():
            with self._index_path.open("rb") as f:
                self._index = pickle.load(f)

    def _save_index(self) -> None:
        tmp = self._index_path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(self._index, f)
        tmp.replace(self._index_path)

    @property
    def cache_size(self) -> int:
        return sum((self.cache_dir / name).stat().st_size for name in self._index.values()
                   if (self.cache_dir / name).exists())

    def _keys(self) -> list[tuple[int, ...]]:
        return list(self._index)

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        k = self._find_longest_prefix_key(tuple(key))
        if k is None:
            raise KeyError("no cached state shares a prefix with the key")
        with (self.cache_dir / self._index[k]).open("rb") as f:
            state: LlamaState = pickle.load(f)
        return state

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(key)
        name = self._index.pop(k, None) or f"state-{abs(hash(k)):x}-{len(self._index)}.pkl"
        with (self.cache_dir / name).open("wb") as f:
            pickle.dump(value, f)
        self._index[k] = name
        while self.cache_size > self.capacity_bytes and len(self._index) > 1:
            _, old = self._index.popitem(last=False)
            (self.cache_dir / old).unlink(missing_ok=True)
        self._save_index()

    def clear(self) -> None:
        for name in self._index.values():
            (self.cache_dir / name).unlink(missing_ok=True)
        self._index.clear()
        self._save_index()


__all__ = ["BaseLlamaCache", "LlamaCache", "LlamaDiskCache", "LlamaRAMCache", "LlamaState"]
