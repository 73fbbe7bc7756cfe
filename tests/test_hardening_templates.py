"""Hostile chat templates in GGUF metadata: every one ends in a ValueError, never in a dead process.

A model's ``tokenizer.chat_template`` is untrusted input. llama.cpp's Jinja engine had no depth, step or
size limit: a recursive macro or a self-containing list overflowed the native stack (SIGSEGV), a loop
ran without end, ``range(10**9)`` allocated tens of GB. The engine now runs every render under a budget
(depth, steps, list items, text bytes, seconds; ``_core.chat_template_limits()``), and exceeding it
raises ``ChatFormatError`` (a ValueError) naming the limit, in-process and as a 400 under the server.

Each template of ``tests/fuzz/template_gen.py``'s HOSTILE list is put into a tiny GGUF and used in a
child process with a time limit and an address-space limit (RLIMIT_AS), so that the old behaviour (a
crash, an endless loop, an allocation past the limit) fails the test instead of the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import template_gen as tg

from llama_rewire import _core

MEM_LIMIT = 3 << 30
LIMIT_WORDS = "exceeded a resource limit"

# One child per group of templates: it loads each GGUF, chats once, and prints one JSON line per
# template (so that a death names the template it died on).
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
    from llama_rewire import Llama
    for path in sys.argv[1:]:
        t0 = time.monotonic()
        print(json.dumps({{"start": path}}), flush=True)
        llm = Llama(path, n_ctx=128, verbose=False)
        try:
            llm.create_chat_completion([{{"role": "user", "content": "hi"}}], max_tokens=1)
            out = {{"ok": True}}
        except ValueError as e:
            out = {{"error": type(e).__name__, "message": str(e)[-400:]}}
        llm.close()
        out.update(path=path, seconds=round(time.monotonic() - t0, 2))
        print(json.dumps(out), flush=True)
""")


def _run_child(paths: list[Path], timeout: float) -> dict[str, dict[str, Any]]:
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD.format(mem=MEM_LIMIT), *map(str, paths)],
                           capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child ran past {timeout} s; its output: {e.stdout!r}")
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    started = [line["start"] for line in lines if "start" in line]
    assert p.returncode == 0, (f"the child died (rc {p.returncode}) on {started[-1] if started else '?'}:"
                               f" {p.stderr[-2000:]}")
    return {Path(line["path"]).stem: line for line in lines if "path" in line}


@pytest.fixture(scope="module")
def hostile_ggufs(tiny: Callable[[str], tuple[Path, Any]], tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    base, _ = tiny("llama")
    out = tmp_path_factory.mktemp("hostile_templates")
    return {h.name: tg.write_with_template(base, h.template, out / f"{h.name}.gguf") for h in tg.HOSTILE}


@pytest.mark.parametrize("kind", ["stack", "time", "memory"])
def test_hostile_template_in_gguf_raises(kind: str, hostile_ggufs: dict[str, Path]) -> None:
    cases = [h for h in tg.HOSTILE if h.kind == kind]
    results = _run_child([hostile_ggufs[h.name] for h in cases], timeout=40 + 15 * len(cases))
    limit_s = _core.chat_template_limits()["seconds"]
    for h in cases:
        r = results[h.name]
        assert r["seconds"] < 3 * limit_s + 10, (h.name, r)
        if h.trips:
            assert r.get("error") == "ChatFormatError" and LIMIT_WORDS in r["message"], (h.name, r)
        elif h.renders:
            assert r.get("ok"), (h.name, r)
        else:
            assert r.get("ok") or r.get("error") == "ChatFormatError", (h.name, r)


def test_limits_name_what_was_exceeded() -> None:
    def error(template: str) -> str:
        with pytest.raises(ValueError, match=LIMIT_WORDS) as e:
            _core.ChatTemplates(None, template).apply(json.dumps([{"role": "user", "content": "hi"}]))
        return str(e.value)

    by_name = {h.name: h.template for h in tg.HOSTILE}
    assert "nesting deeper than" in error(by_name["recursive_macro"])
    assert "nested deeper than" in error(by_name["nested_parens"])
    assert "list items" in error(by_name["range_1e9"])
    assert "bytes of text" in error(by_name["string_times_1e10"])


def test_ordinary_templates_are_well_within_the_limits() -> None:
    """Every template llama.cpp ships (models/templates) renders a conversation with tools using a
    small fraction of each limit; none trips one."""
    folder = Path(__file__).parents[1] / "vendor" / "llama.cpp" / "models" / "templates"
    templates = sorted(folder.glob("*.jinja"))
    if not templates:
        pytest.fail(f"no templates in {folder}: is vendor/llama.cpp fetched?")
    limits = _core.chat_template_limits()
    tools = json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    messages = json.dumps([
        {"role": "system", "content": "You are helpful."},
        *[{"role": r, "content": f"message {i}"} for i in range(40) for r in ("user", "assistant")],
        {"role": "user", "content": "And now?"},
    ])
    worst: dict[str, int] = {}
    rendered = 0
    for path in templates:
        try:
            t = _core.ChatTemplates(None, path.read_text(), bos_token="<s>", eos_token="</s>")
            render = t.apply(messages, tools=tools)
        except ValueError as e:
            assert LIMIT_WORDS not in str(e), (path.name, str(e))
            continue
        rendered += 1
        for key, used in render.template_cost.items():
            worst[key] = max(worst.get(key, 0), used)
            assert used * 4 < limits[key], (path.name, render.template_cost)
    assert rendered >= len(templates) // 2, f"only {rendered} of {len(templates)} templates rendered"


def test_a_normal_template_in_gguf_still_chats(tiny: Callable[[str], tuple[Path, Any]],
                                               tmp_path: Path) -> None:
    from llama_rewire import Llama

    base, _ = tiny("llama")
    path = tg.write_with_template(base, tg.CHATML, tmp_path / "chatml.gguf")
    llm = Llama(str(path), n_ctx=128, verbose=False)
    try:
        out = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        llm.close()
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] >= 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_a_template_that_builds_a_long_list_is_refused_at_a_bounded_peak() -> None:
    """(range(4000000)|list)|join(...) allocated about 1.1 GB before the item limit (then 5 million) was
    reached; a list item takes about 250 bytes while it lives."""
    code = textwrap.dedent("""
        import json
        from llama_rewire import _core
        tpl = "{{ (range(4000000)|list)|join(',')|length }}{{ messages[0]['content'] }}"
        try:
            _core.ChatTemplates(None, tpl).apply(json.dumps([{"role": "user", "content": "hi"}]))
            print("rendered")
        except ValueError as e:
            print("refused:", e)
        with open("/proc/self/status") as f:  # this process's own peak (ru_maxrss keeps the parent's)
            print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    said, peak_mib = out.stdout.splitlines()
    assert said.startswith("refused:") and "resource limit" in said, said
    assert int(peak_mib) < 500, said


def test_rsplit_splits_as_python_does() -> None:
    """rsplit searches the reversed text forward (linear time); the pieces are those of str.rsplit."""
    cases = [("a,b,,c", ",", -1), ("a,b,c", ",", 1), ("aaa", "aa", -1), ("aaaa", "aa", -1), ("abc", "x", -1),
             (",", ",", -1), ("x" * 40 + "SEP" + "y" * 20, "SEP", -1), ("ab" * 30, "b" + "ab" * 8, 2),
             ("q" * 70, "q" * 17, -1), ("", ",", -1)]
    for text, sep, maxsplit in cases:
        tpl = "{{ messages[0]['content'].rsplit(" + json.dumps(sep) + ", " + str(maxsplit) + ")|join('|') }}"
        got = _core.ChatTemplates(None, tpl).apply(json.dumps([{"role": "user", "content": text}])).prompt
        assert got.decode() == "|".join(text.rsplit(sep, maxsplit)), (text, sep, maxsplit)


def test_limits_can_be_read_and_checked() -> None:
    limits = _core.chat_template_limits()
    assert set(limits) == {"depth", "steps", "items", "bytes", "seconds"}
    with pytest.raises(ValueError, match="depth"):
        _core.set_chat_template_limits(depth=10**6)
    with pytest.raises(ValueError, match="positive"):
        _core.set_chat_template_limits(steps=0)
    assert _core.chat_template_limits() == limits


_SERVER_CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
    sys.path.insert(0, {tests!r})
    import httpx
    from serving import running
    from llama_rewire.server import ModelSettings, Settings, create_app
    paths = sys.argv[1:]
    models = [ModelSettings(model=p, model_alias=f"m{{i}}", n_ctx=128) for i, p in enumerate(paths)]
    with running(create_app(Settings(models=models))) as url:
        for i, p in enumerate(paths):
            r = httpx.post(url + "/v1/chat/completions", timeout=120, json={{
                "model": f"m{{i}}", "max_tokens": 1, "messages": [{{"role": "user", "content": "hi"}}]}})
            print(json.dumps({{"path": p, "status": r.status_code, "body": r.text[-400:]}}), flush=True)
""")


def test_hostile_templates_under_the_server(hostile_ggufs: dict[str, Path], tiny: Callable[[str], Any],
                                            tmp_path: Path) -> None:
    """Under ``serve``: a 400 naming the limit for each hostile model, and the server keeps serving (the
    normal model after them answers)."""
    names = ["recursive_macro", "self_list_print", "nested_parens", "range_1e9", "string_times_1e10",
             "deep_list_chain"]
    base, _ = tiny("llama")
    normal = tg.write_with_template(base, tg.CHATML, tmp_path / "normal.gguf")
    paths = [str(hostile_ggufs[n]) for n in names] + [str(normal)]
    code = _SERVER_CHILD.format(mem=MEM_LIMIT, tests=str(Path(__file__).parent))
    try:
        p = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                           timeout=240, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the server child ran past its time limit; its output: {e.stdout!r}")
    assert p.returncode == 0, p.stderr[-2000:]
    results = {Path(line["path"]).stem: line for line in map(json.loads, p.stdout.splitlines())}
    for name in names:
        assert results[name]["status"] == 400, (name, results[name])
        assert LIMIT_WORDS in results[name]["body"], (name, results[name])
    assert results["normal"]["status"] == 200, results["normal"]
