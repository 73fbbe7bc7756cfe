"""``llama_rewire.install_as_llama_cpp()``: ``import llama_cpp`` and its submodules resolve to ours, each
module loaded once. Every case runs in a child interpreter: the alias changes the process's imports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# llama-cpp-python 0.3.36's public submodules that llama-rewire has (its C API module is tested below)
SUBMODULES = ["llama", "llama_types", "llama_grammar", "llama_chat_format", "llama_cache",
              "llama_speculative", "llama_tokenizer", "_utils", "_logger", "_internals", "server",
              "server.app", "server.settings", "server.errors", "server.__main__"]


def run(code: str, *, env_path: Path | None = None, timeout: float = 120,
        flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(env_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def test_llama_cpp_and_its_submodules_are_ours_loaded_once() -> None:
    out = run(f"""
        import importlib, json, sys
        import llama_rewire
        llama_rewire.install_as_llama_cpp()
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # once failed: type registered twice
        from llama_cpp import Llama, LlamaGrammar
        result = {{"package": llama_cpp is llama_rewire, "same": {{}}}}
        for name in {SUBMODULES!r}:
            alias = importlib.import_module("llama_cpp." + name)
            result["same"][name] = alias is importlib.import_module("llama_rewire." + name)
        # no module object twice: every llama_cpp.* entry is the llama_rewire.* one
        files = [getattr(m, "__file__", None) for n, m in sys.modules.items() if n.startswith("llama_rewire")]
        result["loaded_once"] = len(files) == len(set(files))
        result["aliases"] = all(m is sys.modules["llama_rewire" + n[len("llama_cpp"):]]
                                for n, m in sys.modules.items() if n.startswith("llama_cpp"))
        result["Llama"] = Llama is llama_rewire.Llama and LlamaGrammar is llama_rewire.LlamaGrammar
        result["formatter"] = Jinja2ChatFormatter is llama_rewire.llama_chat_format.Jinja2ChatFormatter
        print(json.dumps(result))
    """)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["package"] and result["Llama"] and result["formatter"]
    assert result["same"] == dict.fromkeys(SUBMODULES, True)
    assert result["loaded_once"] and result["aliases"]


def test_aliased_modules_keep_their_own_spec(tmp_path: Path) -> None:
    """Importing a module under its alias leaves its __spec__ its own: the relative imports it runs later
    (``from . import _chat`` when a Llama is made) once raised ImportWarning (``__package__ !=
    __spec__.parent``), an error under ``-W error``."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from tiny_models import write_llama
    finally:
        sys.path.pop(0)
    model = tmp_path / "tiny.gguf"
    write_llama(model)
    out = run(f"""
        import importlib
        import llama_rewire
        llama_rewire.install_as_llama_cpp()
        import llama_cpp.llama, llama_cpp.server.app, llama_cpp.llama_chat_format
        names = [m.__spec__.name for m in (llama_rewire.llama, llama_rewire.server, llama_rewire.server.app)]
        assert names == ["llama_rewire.llama", "llama_rewire.server", "llama_rewire.server.app"], names
        llm = llama_cpp.Llama({str(model)!r}, verbose=False)
        print(llm.create_chat_completion([{{"role": "user", "content": "hi"}}], max_tokens=2)["object"])
        importlib.reload(llama_cpp.llama_types)
    """, flags=("-W", "error"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "chat.completion"


def test_the_alias_is_lazy_and_unknown_submodules_are_import_errors() -> None:
    out = run("""
        import sys
        import llama_rewire
        llama_rewire.install_as_llama_cpp()
        llama_rewire.install_as_llama_cpp()  # twice: nothing more
        assert "llama_rewire.server.app" not in sys.modules  # nothing imported ahead of use
        import llama_cpp.server.app
        assert llama_cpp.server.app is sys.modules["llama_rewire.server.app"]
        try:
            import llama_cpp.no_such_module
        except ModuleNotFoundError as e:
            print("missing:", e.name)
        from llama_rewire._alias import AliasFinder, uninstall_as_llama_cpp
        assert sum(isinstance(f, AliasFinder) for f in sys.meta_path) == 1
        uninstall_as_llama_cpp()
        assert "llama_cpp" not in sys.modules and not any(isinstance(f, AliasFinder) for f in sys.meta_path)
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert "missing: llama_cpp.no_such_module" in out.stdout and out.stdout.rstrip().endswith("ok")


def test_an_installed_llama_cpp_python_is_shadowed_or_refused(tmp_path: Path) -> None:
    """A llama_cpp package on the path is never imported after the alias; one imported before it makes
    install_as_llama_cpp raise, since objects of both would mix."""
    peer = tmp_path / "llama_cpp"
    peer.mkdir()
    (peer / "__init__.py").write_text("PEER = True\n")
    (peer / "llama.py").write_text("raise RuntimeError('the peer was imported')\n")
    shadowed = run("""
        import llama_rewire
        llama_rewire.install_as_llama_cpp()
        import llama_cpp, llama_cpp.llama
        print(llama_cpp is llama_rewire, hasattr(llama_cpp, "PEER"))
    """, env_path=tmp_path)
    assert shadowed.returncode == 0, shadowed.stderr
    assert shadowed.stdout.split() == ["True", "False"]
    refused = run("""
        import llama_cpp
        import llama_rewire
        try:
            llama_rewire.install_as_llama_cpp()
        except RuntimeError as e:
            print("refused:", e)
    """, env_path=tmp_path)
    assert refused.returncode == 0, refused.stderr
    assert "refused: llama_cpp is already imported" in refused.stdout


def test_import_llama_rewire_as_llama_cpp_keeps_working() -> None:
    out = run("""
        import llama_rewire as llama_cpp
        from llama_rewire import llama_chat_format, llama_tokenizer, llama_types
        assert llama_cpp.llama_tokenizer.LlamaTokenizer is llama_cpp.LlamaTokenizer
        assert llama_cpp.llama_chat_format.Jinja2ChatFormatter and llama_cpp.llama_types.CompletionUsage
        import sys
        assert "llama_cpp" not in sys.modules  # without install_as_llama_cpp nothing is aliased
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_c_api_module_is_llama_cpp_llama_cpp() -> None:
    """``llama_cpp.llama_cpp`` (the ctypes C API) is llama_rewire.llama_cpp, and its names are at the top
    level of ``llama_cpp`` as in llama-cpp-python (looked up on first use)."""
    out = run("""
        import sys
        import llama_rewire
        llama_rewire.install_as_llama_cpp()
        import llama_cpp
        assert "llama_rewire.llama_cpp" not in sys.modules
        import llama_cpp.llama_cpp as capi
        assert capi is sys.modules["llama_rewire.llama_cpp"] and llama_cpp.llama_cpp is capi
        assert llama_cpp.llama_decode is capi.llama_decode
        assert llama_cpp.LLAMA_DEFAULT_SEED == capi.LLAMA_DEFAULT_SEED
        try:
            llama_cpp.no_such_function
        except AttributeError as e:
            print("missing:", e)
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert "missing: module 'llama_rewire' has no attribute 'no_such_function'" in out.stdout
    assert out.stdout.rstrip().endswith("ok")
