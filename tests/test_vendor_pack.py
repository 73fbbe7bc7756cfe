"""scripts/llama_vendor.py pack: the pristine llama.cpp tree a build reads, for a machine that cannot
reach PyPI; LLAMA_REWIRE_VENDOR_PACK makes `apply` build the same patched tree from it, and refuses a
tarball that is not of the pinned sdist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor" / "llama.cpp"
sys.path.insert(0, str(ROOT / "scripts"))

import llama_vendor  # noqa: E402

pytestmark = pytest.mark.skipif(not (VENDOR / ".git").is_dir(),
                                reason="no vendor/llama.cpp: the build fetches it")


def vendor_tool(project: Path, *args: str, pack: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_REWIRE_VENDOR_PACK", "LLAMA_REWIRE_SDIST")}
    if pack is not None:
        env["LLAMA_REWIRE_VENDOR_PACK"] = str(pack)
        # a machine without PyPI: pip finds nothing, so a download would fail rather than pass unseen
        env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple"
        env["PIP_NO_INDEX"] = "1"
    return subprocess.run([sys.executable, str(project / "scripts" / "llama_vendor.py"), *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "llama.cpp.tar.gz"
    done = vendor_tool(ROOT, "pack", str(out))
    assert done.returncode == 0, done.stderr
    return out


def project_copy(tmp: Path) -> Path:
    """The vendoring script and the patch series in a project of their own (no vendor/ yet)."""
    (tmp / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "llama_vendor.py", tmp / "scripts")
    shutil.copytree(ROOT / "patches", tmp / "patches")
    return tmp


def test_pack_holds_the_pristine_tree_a_build_reads(packed: Path) -> None:
    with tarfile.open(packed) as tar:
        members = tar.getmembers()
        files = {m.name for m in members if m.isfile()} - {"llama.cpp/" + llama_vendor.PACK_MARK}
        mark = tar.extractfile("llama.cpp/" + llama_vendor.PACK_MARK)
        assert mark is not None and llama_vendor.SDIST_SHA256 in mark.read().decode()
        # pristine: the files our patches change are upstream's, not ours
        graph = tar.extractfile("llama.cpp/src/llama-graph.cpp")
        assert graph is not None and b"rewire" not in graph.read()
    upstream = subprocess.run(["git", "ls-tree", "-r", "--name-only", "upstream"], cwd=VENDOR, check=True,
                              capture_output=True, text=True).stdout.split()  # fmt: skip
    want = {f"llama.cpp/{n}" for n in upstream if n.split("/")[0] not in llama_vendor.PACK_LEAVE_OUT}
    assert files == want
    for needed in ("ggml/src/ggml-cuda/ggml-cuda.cu", "ggml/src/ggml-metal/ggml-metal.cpp",
                   "tools/llama-bench/llama-bench.cpp", "tools/quantize/quantize.cpp"):
        assert f"llama.cpp/{needed}" in files, needed
    assert packed.stat().st_size < 32e6, packed.stat().st_size


def test_apply_from_a_pack_gives_the_same_patched_tree(packed: Path, tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    done = vendor_tool(project, "apply", pack=packed)
    assert done.returncode == 0, done.stderr
    assert "from the packed tree" in done.stderr
    status = vendor_tool(project, "status", pack=packed)
    lines = status.stdout.splitlines()
    assert len(lines) == len(llama_vendor.series()), lines
    assert all(line.startswith("applied ") for line in lines), lines
    ours = project / "vendor" / "llama.cpp"
    for rel in ("src/llama-graph.cpp", "src/llama-context.cpp", "ggml/src/ggml-cpu/amx/mmq.cpp",
                "ggml/src/ggml-rpc/ggml-rpc.cpp", "ggml/src/CMakeLists.txt", "CMakeLists.txt"):
        assert (ours / rel).read_bytes() == (VENDOR / rel).read_bytes(), rel
    assert not (ours / llama_vendor.PACK_MARK).exists()
    # the series on top of the packed tree is ours: export writes it back unchanged
    again = vendor_tool(project, "export")
    assert again.returncode == 0, again.stderr
    for patch in sorted((ROOT / "patches").glob("*.patch")):
        assert (project / "patches" / patch.name).read_bytes() == patch.read_bytes(), patch.name


def test_a_tarball_of_another_tree_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.tar.gz"
    src = tmp_path / "src" / "llama.cpp"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("project(other)\n")
    (src / llama_vendor.PACK_MARK).write_text("llama-cpp-python 0.0.1 sha256 0, llama.cpp 0\n")
    with tarfile.open(other, "w:gz") as tar:
        tar.add(src, arcname="llama.cpp")
    (tmp_path / "proj").mkdir()
    project = project_copy(tmp_path / "proj")
    done = vendor_tool(project, "apply", pack=other)
    assert done.returncode == 1
    assert "not a packed tree of the pinned llama.cpp" in done.stderr and "0.0.1" in done.stderr
    assert not (project / "vendor" / "llama.cpp").exists()


@pytest.mark.parametrize("content", [None, b"not a tarball at all", b"\x1f\x8b\x08\x00 truncated gzip"])
def test_a_missing_or_unreadable_pack_is_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    pack = tmp_path / "llama.cpp.tar.gz"
    if content is not None:
        pack.write_bytes(content)
    (tmp_path / "proj").mkdir()
    project = project_copy(tmp_path / "proj")
    done = vendor_tool(project, "apply", pack=pack)
    assert done.returncode == 1, done.stderr
    assert "cannot read it as a packed tree" in done.stderr and str(pack) in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "vendor" / "llama.cpp").exists()


def test_pack_arguments_and_an_unwritable_target(tmp_path: Path) -> None:
    for args in (["pack"], ["status", str(tmp_path / "x.tar.gz")]):
        done = vendor_tool(ROOT, *args)
        assert done.returncode == 2 and "pack takes the tarball to write" in done.stderr, (args, done.stderr)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be\n")
    done = vendor_tool(ROOT, "pack", str(blocker / "llama.cpp.tar.gz"))
    assert done.returncode == 1 and "cannot write the packed tree there" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
