"""Per-request steering: a completion or chat request's ``steer`` field names a control vector in the
server's steering directory (``--steering-dir``) and an ``alpha``.

The vector is found (a name inside the directory, nothing else) and read before the request waits for
its model; while the request holds the model's lock, the steering is set, the completion runs (for a
stream: until it ends or is closed), and the model's earlier edits (none) are put back. Setting or
restoring edits drops the tokens evaluated under other edits (KV cache, prefix reuse, prompt cache), so
a steered request never changes another request's output.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import APIError

if TYPE_CHECKING:
    from ..llama import Llama
    from ..residual import ControlVector
    from .schemas import SteerRequest

log = logging.getLogger("llama_rewire.server")

T = TypeVar("T")
PARAM = "steer.vector"
_CACHE_SIZE = 32
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NAME_CHARS = 1024


class SteeringDir:
    """The directory requests take their vectors from; vectors read once and kept while unchanged."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path).resolve()
        if not self.root.is_dir():
            raise ValueError(f"the steering directory {str(path)!r} is not a directory")
        self._cache: dict[Path, tuple[tuple[int, int], ControlVector]] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> Path:
        """The file ``name`` names inside the directory; an APIError (400, ``steer.vector``) for an
        absolute path, a ``..`` part, a path that leads outside (also through a link), or no such file."""
        if not name or "\0" in name:
            raise APIError(400, "steer.vector: give the file name of a control vector in the steering "
                                "directory", param=PARAM)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, from a JSON escape
            raise APIError(400, "steer.vector: the name is not valid Unicode text", param=PARAM) from None
        if len(name) > MAX_NAME_CHARS:
            raise APIError(400, f"steer.vector: a name of {len(name)} characters is longer than any in the "
                                f"steering directory (at most {MAX_NAME_CHARS})", param=PARAM)
        parts = PurePosixPath(name).parts
        if (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or "\\" in name
                or PureWindowsPath(name).drive or ".." in parts):
            raise APIError(400, f"steer.vector {name!r}: a file name inside the steering directory, not a "
                                "path out of it", param=PARAM)
        try:
            path = (self.root / name).resolve()
            if not path.is_relative_to(self.root) or path == self.root:
                raise APIError(400, f"steer.vector {name!r}: leads outside the steering directory",
                               param=PARAM)
            found = path.is_file()
        except (OSError, RuntimeError) as e:  # a name too long, a loop of links (RuntimeError before 3.13)
            reason = getattr(e, "strerror", None) or "a loop of symbolic links"
            raise APIError(400, f"steer.vector {name[:100]!r}: not a control vector in the steering "
                                f"directory ({reason})", param=PARAM) from None
        if not found:
            raise APIError(400, f"steer.vector {name!r}: no such control vector in the steering directory "
                                f"(see GET /extras/steering)", param=PARAM)
        return path

    def load(self, name: str) -> ControlVector:
        """The control vector ``name`` names (see :meth:`resolve`); a file that is not one is a 400."""
        from ..residual import ControlVector

        path = self.resolve(name)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            with self._lock:
                cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            vector = ControlVector.load(path)
        except (ValueError, OSError) as e:
            message = str(e).replace(str(self.root) + os.sep, "")  # no server paths in responses
            raise APIError(400, f"steer.vector {name!r}: {message}", param=PARAM) from None
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = (stamp, vector)
        return vector

    def names(self) -> list[str]:
        """The ``.gguf`` files of the directory (and its subdirectories), as requests name them."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.gguf") if p.is_file())


@dataclass(frozen=True)
class Steering:
    """What one request applies: a loaded vector and how."""

    name: str
    vector: ControlVector
    alpha: float
    layers: list[int] | None
    tokens: str

    def apply(self, llm: Llama) -> tuple[Any, ...]:
        """Set the steering; returns the edits it replaced. All or nothing: when setting it fails, the
        edits in force before are put back. A vector that does not fit the model (its width, its layers)
        or a value the model refuses is a 400 naming ``steer``."""
        previous = tuple(llm.edits)
        try:
            llm.set_steering(self.vector, self.alpha, layers=self.layers, tokens=self.tokens)
        except (ValueError, TypeError) as e:
            self.restore(llm, previous)
            raise APIError(400, f"steer: {self.name!r} does not fit this model: {e}", param="steer") from None
        except BaseException:
            self.restore(llm, previous)
            raise
        return previous

    @staticmethod
    def restore(llm: Llama, previous: tuple[Any, ...]) -> None:
        """Put ``previous`` back in force; if the model refuses them, clear every edit rather than leave
        a request's steering on the model (and say so in the log)."""
        try:
            llm.set_edits(list(previous))
            return
        except Exception:
            log.exception("restoring the edits after a steered request failed; clearing them")
        llm.set_edits([])


async def steering_of(request: SteerRequest | None, steering_dir: SteeringDir | None) -> Steering | None:
    """The request's steering, with its vector read (in a worker thread); None when it has none."""
    import anyio.to_thread

    if request is None:
        return None
    if steering_dir is None:
        raise APIError(400, "steer: this server has no steering vectors (start it with --steering-dir DIR)",
                       param="steer")
    vector = await anyio.to_thread.run_sync(steering_dir.load, request.vector)
    alpha = float(request.alpha)
    wanted = [v for il, v in vector.directions.items() if request.layers is None or il in request.layers]
    peak = max((float(np.max(np.abs(v))) for v in wanted), default=0.0)
    if abs(alpha) * peak > FLOAT32_MAX:
        raise APIError(400, f"steer.alpha {alpha:g}: alpha times the vector's largest value ({peak:g}) is "
                            "beyond the float32 range", param="steer.alpha")
    return Steering(request.vector, vector, alpha, request.layers, request.tokens)


@contextmanager
def one_turn(llm: Llama, *, while_streaming: bool = False) -> Iterator[None]:
    """Hold the Llama's guard across several calls from this thread, so that no other caller (the
    parallel slots' decode thread) runs between them: it would see the request's steering set."""
    try:
        held = llm._guard.enter("a steered request", while_streaming=while_streaming)
    except RuntimeError:  # the Llama is closed: the calls inside raise that themselves
        held = False
    try:
        yield
    finally:
        if held:
            llm._guard.exit()


def steered(steering: Steering | None, fn: Callable[[Llama], T]) -> Callable[[Llama], T]:
    """``fn`` run under the steering (``Llama.steered``: one turn on the Llama, the earlier edits put back
    afterwards, also when it fails). A vector the model refuses is a 400 naming ``steer``."""
    if steering is None:
        return fn

    def call(llm: Llama) -> T:
        with ExitStack() as scope:
            try:
                scope.enter_context(llm.steered(steering.vector, steering.alpha, layers=steering.layers,
                                                tokens=steering.tokens))
            except (ValueError, TypeError) as e:
                raise APIError(400, f"steer: {steering.name!r} does not fit this model: {e}",
                               param="steer") from None
            return fn(llm)

    return call


def steered_stream(steering: Steering | None,
                   start: Callable[[Llama], Iterator[Any]]) -> Callable[[Llama], Iterator[Any]]:
    """``start`` (which returns a chunk iterator) run under the steering, which stays until the iterator
    ends, fails or is closed; the earlier edits are restored then, in the same turn as the last step."""
    if steering is None:
        return start

    def call(llm: Llama) -> Iterator[Any]:
        with one_turn(llm):
            previous = steering.apply(llm)
            try:
                iterator = start(llm)
            except BaseException:
                steering.restore(llm, previous)
                raise
        return RestoringIterator(iterator, lambda: steering.restore(llm, previous), llm)

    return call


class RestoringIterator:
    """A chunk iterator that calls ``restore`` once, when it is exhausted, fails or is closed. With
    ``llm``, each step and the restore after the last are one turn on it (nothing runs in between)."""

    def __init__(self, inner: Iterator[Any], restore: Callable[[], None], llm: Llama | None = None) -> None:
        self.inner = inner
        self._restore: Callable[[], None] | None = restore
        self._llm = llm

    @property
    def usage(self) -> Any:
        return getattr(self.inner, "usage", None)

    def __iter__(self) -> RestoringIterator:
        return self

    def _turn(self) -> AbstractContextManager[None]:
        return nullcontext() if self._llm is None else one_turn(self._llm, while_streaming=True)

    def __next__(self) -> Any:
        with self._turn():
            try:
                return next(self.inner)
            except BaseException:
                self._done()
                raise

    def close(self) -> None:
        with self._turn():
            try:
                close = getattr(self.inner, "close", None)
                if close is not None:
                    close()
            finally:
                self._done()

    def _done(self) -> None:
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()
