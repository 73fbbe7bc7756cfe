#!/usr/bin/env python3
"""Fetch the pinned llama.cpp tree, apply our patch series to it, and re-export the series.

    python scripts/llama_vendor.py fetch    # vendor/llama.cpp from the pinned llama-cpp-python sdist
    python scripts/llama_vendor.py apply    # fetch if missing, then apply patches/*.patch (idempotent)
    python scripts/llama_vendor.py export   # write vendor/llama.cpp's commits since `upstream` to patches/
    python scripts/llama_vendor.py status   # which patches are applied
    python scripts/llama_vendor.py tests    # llama-cpp-python's own tests, from the same sdist
    python scripts/llama_vendor.py pack OUT.tar.gz  # the pristine tree a build reads, for an offline machine

The upstream source is the llama.cpp copy vendored inside the llama-cpp-python sdist named below,
downloaded with pip by name and version and checked against a pinned sha256 (LLAMA_REWIRE_SDIST: a copy
already on disk). A machine that cannot reach PyPI builds from a packed tree instead: `pack` writes the
pristine files a build reads (no docs, model vocabularies or benchmarks: 12 MB instead of the sdist's 77),
marked with the sdist's sha256, and LLAMA_REWIRE_VENDOR_PACK=OUT.tar.gz makes `fetch` extract that, after
checking the mark, when vendor/llama.cpp is missing. vendor/llama.cpp is made
its own git repository whose first commit (tagged `upstream`) is the pristine tree; each patch of the
series is one commit on top, so editing a patch is: change the tree, `git commit --amend` (or
`git rebase -i upstream`) inside vendor/llama.cpp, then `export`.

Only the standard library is used: this runs inside the build, before anything else is installed.
"""

from __future__ import annotations

import argparse
import email
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

# The one pinned upstream line: llama.cpp 0c1e570 as vendored in llama-cpp-python 0.3.36.
SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e570"

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor" / "llama.cpp"
# llama-cpp-python's test suite and the modules it is checked against (tests/test_lcpp_suite.py)
LCPP_TESTS = ROOT / "vendor" / "llama-cpp-python-tests"
LCPP_TEST_FILES = ("tests/", "llama_cpp/llama_types.py")
PATCHES = ROOT / "patches"

# What `pack` leaves out of the tree: nothing in a build (the extension, llama-bench, llama-quantize) reads it
PACK_LEAVE_OUT = ("docs", "models", "benches")
PACK_MARK = "LLAMA_REWIRE_PACKED"  # a file at the packed tree's root: the sdist and commit it came from

# Fixed identity and dates so that applying the series gives the same commits everywhere.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "llama-rewire",
    "GIT_AUTHOR_EMAIL": "llama-rewire@localhost",
    "GIT_COMMITTER_NAME": "llama-rewire",
    "GIT_COMMITTER_EMAIL": "llama-rewire@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


class VendorError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[llama-vendor] {msg}", file=sys.stderr, flush=True)


def git(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(GIT_ENV)
    # never let an enclosing repository (ours) leak in
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return subprocess.run(
        ["git", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", *args],
        cwd=VENDOR,
        env=env,
        check=check,
        text=True,
        capture_output=capture,
    )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_command() -> list[str]:
    """This interpreter's pip, or the first pip on PATH (an isolated build env may hide pip)."""
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise VendorError("pip is needed to download llama.cpp and none was found")


def download_sdist(dest: Path) -> Path:
    """Download the pinned sdist with pip (by name and version) and verify its sha256."""
    cached = os.environ.get("LLAMA_REWIRE_SDIST")
    if cached:
        path = Path(cached)
    else:
        log(f"downloading {SDIST_NAME}=={SDIST_VERSION} (sdist) with pip")
        # --no-binary for this one package only: pip then reads its metadata with wheels of its
        # build requirements instead of building cmake from source.
        subprocess.run(
            [*pip_command(), "download", "--no-deps", "--no-binary", SDIST_NAME,
             "--dest", str(dest), f"{SDIST_NAME}=={SDIST_VERSION}"],
            check=True,
        )
        found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
        if not found:
            raise VendorError(f"pip did not produce an sdist of {SDIST_NAME}=={SDIST_VERSION}")
        path = found[0]
    digest = sha256_of(path)
    if digest != SDIST_SHA256:
        raise VendorError(f"{path.name}: sha256 {digest} does not match the pinned {SDIST_SHA256}")
    return path


def extract(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo] | None = None) -> None:
    """Extract members (default: all) of a checked archive, with the "data" filter where Python has it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
    else:  # Python < 3.11.4
        tar.extractall(dest, members=members)


def extract_tree(tarball: Path, prefix: str, leave_out: Callable[[str], bool]) -> None:
    """vendor/llama.cpp from the files and folders under prefix in tarball (tar.gz), but those whose
    path below prefix leave_out names; extracted beside it first, then renamed into place."""
    tmp = VENDOR.parent / ".llama.cpp.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or m.name == prefix.rstrip("/"):
                continue
            if not (m.isfile() or m.isdir()):
                continue
            m.name = m.name[len(prefix):]
            if leave_out(m.name):
                continue
            members.append(m)
        if not members:
            raise VendorError(f"{tarball.name} holds no {prefix}")
        extract(tar, tmp, members)
    tmp.rename(VENDOR)


def extract_llama_cpp(sdist: Path) -> None:
    # a submodule's gitlink is left out: we make the tree a repository of its own
    extract_tree(sdist, f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/",
                 lambda name: name == ".git" or name.startswith(".git/"))


def pack_mark() -> str:
    return f"{SDIST_NAME} {SDIST_VERSION} sha256 {SDIST_SHA256}, llama.cpp {LLAMA_CPP_COMMIT}\n"


def extract_pack(pack: Path) -> None:
    """vendor/llama.cpp from a tarball that `pack` wrote (checked: its mark names the pinned sdist)."""
    try:
        with tarfile.open(pack, "r:gz") as tar:
            try:
                mark = tar.extractfile("llama.cpp/" + PACK_MARK)
            except KeyError:
                mark = None
            found = mark.read().decode(errors="replace") if mark else "(none)"
    except (OSError, tarfile.TarError) as e:
        raise VendorError(f"LLAMA_REWIRE_VENDOR_PACK={pack}: cannot read it as a packed tree (tar.gz): "
                          f"{e}") from e
    if found != pack_mark():
        raise VendorError(f"{pack}: not a packed tree of the pinned llama.cpp: its {PACK_MARK} says "
                          f"{found.strip()!r}, this tree pins {pack_mark().strip()!r}")  # fmt: skip
    extract_tree(pack, "llama.cpp/", lambda name: name == PACK_MARK)


def pack(out: Path) -> None:
    """Write the pristine tree (the `upstream` commit) but PACK_LEAVE_OUT, and the mark, to out (tar.gz)."""
    fetch()
    excludes = [f":(exclude){d}" for d in PACK_LEAVE_OUT]
    archive = subprocess.run(["git", "archive", "--format=tar", "--prefix=llama.cpp/", "upstream", "--", ".",
                              *excludes], cwd=VENDOR, check=True, capture_output=True).stdout  # fmt: skip
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as src, tarfile.open(out, "w:gz") as dst:
            for m in src.getmembers():
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
            data = pack_mark().encode()
            info = tarfile.TarInfo("llama.cpp/" + PACK_MARK)
            info.size, info.mode, info.mtime = len(data), 0o644, 1767225600  # 2026-01-01, as the commits
            dst.addfile(info, io.BytesIO(data))
    except OSError as e:
        raise VendorError(f"{out}: cannot write the packed tree there: {e}") from e
    log(f"packed llama.cpp {LLAMA_CPP_COMMIT} into {out} ({out.stat().st_size / 1e6:.1f} MB)")


def init_repo() -> None:
    """Make vendor/llama.cpp a git repository whose first commit, tagged `upstream`, is pristine."""
    git("init", "-q")
    git("add", "-A", "-f", ".")
    message = f"llama.cpp {LLAMA_CPP_COMMIT} (from {SDIST_NAME} {SDIST_VERSION})"
    git("commit", "-q", "--no-verify", "-m", message)
    git("tag", "upstream")


def fetch() -> None:
    if (VENDOR / "CMakeLists.txt").exists():
        if not (VENDOR / ".git").exists():
            init_repo()
        return
    VENDOR.parent.mkdir(parents=True, exist_ok=True)
    packed = os.environ.get("LLAMA_REWIRE_VENDOR_PACK")
    if packed:
        log(f"extracting llama.cpp {LLAMA_CPP_COMMIT} from the packed tree {packed}")
        extract_pack(Path(packed))
        init_repo()
        return
    with tempfile.TemporaryDirectory() as tmp:
        sdist = download_sdist(Path(tmp))
        log(f"extracting llama.cpp {LLAMA_CPP_COMMIT} into {VENDOR.relative_to(ROOT)}")
        extract_llama_cpp(sdist)
    init_repo()


def series() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def patch_subject(patch: Path) -> str:
    """The subject of a patch in format-patch form, unfolded, without its [PATCH] tag."""
    head = patch.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
    subject = email.message_from_string(head).get("Subject", "")
    subject = re.sub(r"\s*\n\s*", " ", str(subject)).strip()
    return re.sub(r"^\[PATCH[^\]]*\]\s*", "", subject)


def committed_subjects() -> set[str]:
    """Subjects of the commits on top of the pristine tree (a patch applied with `git am`)."""
    out = git("log", "--format=%s", "upstream..HEAD", check=False)
    return set(out.stdout.splitlines()) if out.returncode == 0 else set()


def is_applied(patch: Path, committed: set[str] | None = None) -> bool:
    # a later patch of the series may change the lines around an earlier one, so that the earlier one
    # no longer reverses cleanly: a commit with its subject says it is applied
    if committed is not None and patch_subject(patch) in committed:
        return True
    return git("apply", "--reverse", "--check", str(patch), check=False).returncode == 0


def apply() -> None:
    fetch()
    committed = committed_subjects()
    for patch in series():
        if is_applied(patch, committed):
            continue
        if git("apply", "--check", str(patch), check=False).returncode != 0:
            raise VendorError(
                f"{patch.relative_to(ROOT)} no longer applies to llama.cpp {LLAMA_CPP_COMMIT}.\n"
                f"  Regenerate it: in vendor/llama.cpp, `git am -3 {patch}` and resolve the conflict\n"
                f"  (or redo the change by hand and commit it), then run\n"
                f"  `python scripts/llama_vendor.py export` and commit the new patches/."
            )
        clean = git("status", "--porcelain", "--untracked-files=no").stdout.strip() == ""
        if clean:
            git("am", "-q", "--keep-cr", "--committer-date-is-author-date", str(patch))
        else:
            git("apply", str(patch))
        log(f"applied {patch.name}")


def export() -> None:
    if not (VENDOR / ".git").exists():
        raise VendorError("vendor/llama.cpp is not a git repository: run `fetch` and `apply` first")
    if git("status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise VendorError("vendor/llama.cpp has uncommitted changes: commit them into the series first")
    for old in series():
        old.unlink()
    git("format-patch", "-q", "--zero-commit", "--no-signature", "--no-numbered",
        "-o", str(PATCHES), "upstream..HEAD")
    for p in series():
        log(f"exported {p.name}")


def extract_lcpp_tests() -> Path:
    """llama-cpp-python's tests/ (and the llama_types module they import) from the pinned sdist, into
    vendor/llama-cpp-python-tests (downloaded once, sha256-checked); returns that folder."""
    if (LCPP_TESTS / "tests").is_dir():
        return LCPP_TESTS
    prefix = f"llama_cpp_python-{SDIST_VERSION}/"
    tmp = LCPP_TESTS.parent / ".llama-cpp-python-tests.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as dl, tarfile.open(download_sdist(Path(dl)), "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            name = m.name[len(prefix):] if m.name.startswith(prefix) else ""
            if m.isfile() and any(name.startswith(f) for f in LCPP_TEST_FILES):
                m.name = name
                members.append(m)
        if not members:
            raise VendorError(f"the sdist of {SDIST_NAME}=={SDIST_VERSION} holds no tests/")
        extract(tar, tmp, members)
    shutil.rmtree(LCPP_TESTS, ignore_errors=True)
    tmp.rename(LCPP_TESTS)
    log(f"extracted {SDIST_NAME} {SDIST_VERSION}'s tests into {LCPP_TESTS.relative_to(ROOT)}")
    return LCPP_TESTS


def status() -> None:
    fetch()
    committed = committed_subjects()
    for patch in series():
        print(f"{'applied' if is_applied(patch, committed) else 'NOT applied':12s} {patch.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["fetch", "apply", "export", "status", "tests", "pack"])
    parser.add_argument("out", nargs="?", type=Path, help="pack: the tarball to write (.tar.gz)")
    args = parser.parse_args(argv)
    if (args.command == "pack") != (args.out is not None):
        parser.error("pack takes the tarball to write, and only pack takes a path")
    try:
        if args.command == "pack":
            pack(args.out)
        else:
            {"fetch": fetch, "apply": apply, "export": export, "status": status,
             "tests": extract_lcpp_tests}[args.command]()
    except (VendorError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", None) or ""
        log(f"error: {e}\n{detail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
