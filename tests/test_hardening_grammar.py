"""Grammars and JSON schemas beyond the limits of llama_rewire._grammar_limits are refused before
llama.cpp's recursive parser, its rule expansion or its schema converter sees them.

What used to crash the process (a stack overflow in llama.cpp) runs in a child process with a time
and memory limit, so that the old behaviour fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import running

from llama_rewire import Llama, LlamaGrammar, _core
from llama_rewire._grammar_limits import (
    MAX_GRAMMAR_CHAIN,
    MAX_GRAMMAR_CHARS,
    MAX_GRAMMAR_CLASS,
    MAX_GRAMMAR_NESTING,
    MAX_GRAMMAR_PATHS,
    MAX_GRAMMAR_REPETITION,
    MAX_GRAMMAR_RULES,
    MAX_JSON_SCHEMA_DEPTH,
    MAX_JSON_SCHEMA_PROPERTIES,
    MAX_JSON_SCHEMA_REFS,
    check_grammar,
)
from llama_rewire.errors import GrammarError
from llama_rewire.llama_grammar import JSON_GBNF, json_schema_to_gbnf


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter (4 GiB of address space); its exit status and output."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit_memory, check=False)


def nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n"


def rule_chain(n: int) -> str:
    """root -> r0 -> r1 -> ... each reference followed by a literal: llama.cpp's stacks grow one
    element per rule, and its left-recursion check recurses once per rule."""
    return "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "x"\n' for i in range(n)) + f'r{n} ::= "y"\n'


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def ref_chain(n: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}}
                            for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


# -- the crashes, in a child process ------------------------------------------------------------------


def test_deeply_nested_grammar_is_refused_not_a_crash() -> None:
    """50,000 nested parentheses overflowed the stack of llama.cpp's recursive-descent parser."""
    out = run_child("""
        from llama_rewire import LlamaGrammar
        from llama_rewire.errors import GrammarError
        text = "root ::= " + "(" * 50000 + '"a"' + ")" * 50000
        try:
            LlamaGrammar.from_string(text)
        except GrammarError as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "MAX_GRAMMAR_NESTING" in out.stdout


def test_long_rule_chain_is_refused_not_a_crash() -> None:
    """100,000 rules referring each to the next: llama.cpp's left-recursion check overflowed the stack
    (and 20,000 took half a minute: its stacks are copied once per rule)."""
    out = run_child(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_hardening_grammar import rule_chain
        from llama_rewire import LlamaGrammar
        from llama_rewire.errors import GrammarError
        try:
            LlamaGrammar.from_string(rule_chain(100000))
        except GrammarError as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "(MAX_GRAMMAR_" in out.stdout


def test_json_schema_with_a_long_ref_chain_is_refused_not_a_crash() -> None:
    """5,000 "$ref"s each leading to the next overflowed the stack of llama.cpp's schema converter."""
    out = run_child(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_hardening_grammar import ref_chain
        from llama_rewire import LlamaGrammar
        from llama_rewire.errors import GrammarError
        try:
            LlamaGrammar.from_json_schema(ref_chain(5000))
        except GrammarError as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "MAX_JSON_SCHEMA_REFS" in out.stdout


# -- each limit, at and beyond it ---------------------------------------------------------------------


def test_nesting_limit() -> None:
    assert _core.grammar_check(None, LlamaGrammar.from_string(nested(MAX_GRAMMAR_NESTING)).grammar)
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_NESTING"):
        LlamaGrammar.from_string(nested(MAX_GRAMMAR_NESTING + 1))


def test_parentheses_inside_literals_classes_and_comments_do_not_count() -> None:
    deep = "(" * (MAX_GRAMMAR_NESTING + 10)
    text = f'root ::= "{deep}" [{"(" * MAX_GRAMMAR_CLASS}] # {deep}\n'  # a class is shorter anyway
    assert LlamaGrammar.from_string(text).grammar == text


def test_rule_limit_counts_groups_and_generated_rules() -> None:
    groups = "root ::= " + ' "x" '.join(['("a")'] * MAX_GRAMMAR_RULES) + "\n"
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_RULES"):
        LlamaGrammar.from_string(groups)
    generated = 'root ::= ("x"?){0,1999}\n' * (MAX_GRAMMAR_RULES // 1999 + 1)
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_RULES"):
        LlamaGrammar.from_string(generated)


def test_chain_limit() -> None:
    """20,000 rules each starting with the next (300 KB) took llama.cpp 34 s to set up."""
    start = time.monotonic()
    assert _core.grammar_check(None, LlamaGrammar.from_string(rule_chain(MAX_GRAMMAR_CHAIN - 2)).grammar)
    assert time.monotonic() - start < 10
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_CHAIN"):
        LlamaGrammar.from_string(rule_chain(MAX_GRAMMAR_CHAIN))
    # through references at the end of their alternative, and through items that may match nothing
    n = MAX_GRAMMAR_CHAIN
    tail = "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "y"\n'
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_CHAIN"):
        LlamaGrammar.from_string(tail)
    hidden = rule_chain(MAX_GRAMMAR_CHAIN).replace(" ::= r", ' ::= ""? [a]* r')
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_CHAIN"):
        LlamaGrammar.from_string(hidden)


def diamonds(n: int) -> str:
    """Each rule two alternatives starting with the next rule: 2**n ways for root to start."""
    rules = "".join(f'r{i} ::= r{i + 1} | r{i + 1} "x"\n' for i in range(n))
    return "root ::= r0\n" + rules + f'r{n} ::= "y"\n'


def test_exponential_starts_are_refused_not_a_hang() -> None:
    """A 350-byte grammar of 16 such rules held llama.cpp for 47 s (65,536 parse stacks, each compared
    with the others); 24 rules would take hours."""
    out = run_child(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_hardening_grammar import diamonds
        from llama_rewire import LlamaGrammar
        from llama_rewire.errors import GrammarError
        try:
            LlamaGrammar.from_string(diamonds(24))
        except GrammarError as e:
            print("refused:", e)
    """, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "MAX_GRAMMAR_PATHS" in out.stdout


def test_ambiguous_grammars_are_refused_not_a_hang() -> None:
    """Optional items repeated inside repetitions (30 bytes) held sampling for minutes: the parse stacks
    grow combinatorially and every candidate token is matched against each. llama.cpp now bounds them."""
    out = run_child("""
        from llama_rewire import LlamaGrammar
        from llama_rewire.errors import GrammarError
        for text in ['root ::= (("a"?){0,40}){0,40} "b"', 'root ::= ((("a" | "aa")?){0,30}){0,30}']:
            try:
                LlamaGrammar.from_string(text)
                print("accepted:", text)
            except GrammarError as e:
                print("refused:", e)
    """, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("refused:") == 2 and "too ambiguous" in out.stdout, out.stdout


def test_a_grammar_too_ambiguous_while_sampling_is_a_grammar_error(tiny_llm: Callable[..., Llama]) -> None:
    # it starts narrow and becomes ambiguous only after the first characters
    grammar = LlamaGrammar.from_string('root ::= "x" (("a"?){0,40}){0,40} "b"', verbose=False)
    llm = tiny_llm("llama")
    with pytest.raises(GrammarError, match="too ambiguous"):
        llm.create_completion([1, 5, 9], max_tokens=4, temperature=0.0, grammar=grammar)
    assert llm.create_completion([1, 5, 9], max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1


def test_class_limit() -> None:
    """One class of 80,000 ranges held sampling for minutes (each character is matched range by range)."""
    LlamaGrammar.from_string("root ::= [" + "a-b" * (MAX_GRAMMAR_CLASS // 3) + "]+")
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_CLASS"):
        LlamaGrammar.from_string("root ::= [" + "a-b" * 80000 + "]+")


def test_json_schema_properties_limit() -> None:
    """3,000 optional properties (80 KB) held the converter, and a server, for minutes."""
    def props(n: int) -> dict[str, Any]:
        return {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)}}

    start = time.monotonic()
    LlamaGrammar.from_json_schema(props(MAX_JSON_SCHEMA_PROPERTIES), verbose=False)
    assert time.monotonic() - start < 10
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_PROPERTIES"):
        LlamaGrammar.from_json_schema(props(3000), verbose=False)
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_PROPERTIES"):
        json_schema_to_gbnf(json.dumps({"type": "array", "items": props(MAX_JSON_SCHEMA_PROPERTIES + 1)}))


def test_paths_limit() -> None:
    start = time.monotonic()
    assert _core.grammar_check(None, LlamaGrammar.from_string(diamonds(8)).grammar)
    assert time.monotonic() - start < 10
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_PATHS"):
        LlamaGrammar.from_string(diamonds(10))
    flat = "root ::= " + " | ".join(f'"{i}x"' for i in range(MAX_GRAMMAR_PATHS)) + "\n"
    LlamaGrammar.from_string(flat)
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_PATHS"):
        LlamaGrammar.from_string(flat.replace(" | ", ' | "a" | ', 1))


def test_repetition_bounds() -> None:
    LlamaGrammar.from_string(f'root ::= "x"{{{MAX_GRAMMAR_REPETITION}}}')
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_REPETITION"):
        LlamaGrammar.from_string(f'root ::= "x"{{{MAX_GRAMMAR_REPETITION + 1}}}')
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_REPETITION"):
        LlamaGrammar.from_string('root ::= "x"{' + "9" * 5000 + ",}")
    # comments and newlines inside the braces do not hide a bound
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_REPETITION"):
        LlamaGrammar.from_string('root ::= ("x"{ # many\n 5000 # more\n })')
    # an upper bound above the threshold is no upper bound for llama.cpp: accepted, nothing expanded
    LlamaGrammar.from_string('root ::= "x"{0,100000000}')


def test_repetition_expansion_is_bounded() -> None:
    """x{m,n} is written out as copies of x: 1,999 copies of a 1,000-character literal are 2 million
    grammar elements, and a 100 KB grammar of those would be 100 times that."""
    literal = '"' + "a" * 1000 + '"'
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_ELEMENTS"):
        LlamaGrammar.from_string(f"root ::= {literal}{{1999}}")
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_ELEMENTS"):
        LlamaGrammar.from_string(f"root ::= ({literal}{{0,1999}})")
    LlamaGrammar.from_string(f"root ::= {literal}{{100}}")


def test_size_limit() -> None:
    filler = "# " + "x" * 1000 + "\n"
    text = 'root ::= "a"\n' + filler * (MAX_GRAMMAR_CHARS // len(filler) + 1)
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_CHARS"):
        LlamaGrammar.from_string(text)


def test_every_way_a_grammar_is_made_is_checked(tmp_path: Path) -> None:
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_NESTING"):
        LlamaGrammar(_grammar=nested(MAX_GRAMMAR_NESTING + 1))
    path = tmp_path / "deep.gbnf"
    path.write_text(nested(MAX_GRAMMAR_NESTING + 1))
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_NESTING"):
        LlamaGrammar.from_file(str(path))
    # token references skip llama.cpp's check without a vocabulary, not the limits
    with pytest.raises(GrammarError, match="MAX_GRAMMAR_NESTING"):
        LlamaGrammar.from_string(nested(MAX_GRAMMAR_NESTING + 1).replace('"a"', "<[1]>"))


def test_grammars_that_work_still_pass() -> None:
    check_grammar(JSON_GBNF)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 50},
                                               "tags": {"type": "array", "items": {"type": "string"},
                                                        "minItems": 1, "maxItems": 5}}}
    LlamaGrammar.from_json_schema(schema)


# -- JSON schemas --------------------------------------------------------------------------------------


def test_json_schema_depth_limit() -> None:
    levels = (MAX_JSON_SCHEMA_DEPTH - 1) // 2  # each level is an object and its "properties"
    LlamaGrammar.from_json_schema(deep_schema(levels))
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_DEPTH"):
        LlamaGrammar.from_json_schema(deep_schema(levels + 1))
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_DEPTH"):
        LlamaGrammar.from_json_schema(json.dumps(deep_schema(levels + 1)))


def test_json_schema_deeper_than_python_recursion_is_a_grammar_error() -> None:
    """json.dumps and json.loads raise RecursionError (not a ValueError) beyond ~1,000 levels."""
    deep: dict[str, Any] = {}
    for _ in range(50000):
        deep = {"not": deep}
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_DEPTH"):
        LlamaGrammar.from_json_schema(deep)
    text = '{"not":' * 50000 + "{}" + "}" * 50000
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_DEPTH"):
        json_schema_to_gbnf(text)


def test_json_schema_ref_limit() -> None:
    LlamaGrammar.from_json_schema(ref_chain(MAX_JSON_SCHEMA_REFS - 1))
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_REFS"):
        LlamaGrammar.from_json_schema(ref_chain(MAX_JSON_SCHEMA_REFS + 1))


# -- the completion, chat and server paths --------------------------------------------------------------


def test_response_format_and_tools_with_deep_schemas(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", chat_format="chatml", n_ctx=128)
    messages = [{"role": "user", "content": "hi"}]
    too_deep = deep_schema(MAX_JSON_SCHEMA_DEPTH)
    with pytest.raises(ValueError, match="MAX_JSON_SCHEMA_DEPTH"):
        llm.create_chat_completion(messages, max_tokens=2, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": too_deep}})
    tools = [{"type": "function", "function": {"name": "f", "parameters": too_deep}}]
    with pytest.raises(GrammarError, match="MAX_JSON_SCHEMA_DEPTH"):
        llm.create_chat_completion(messages, max_tokens=2, tools=tools, tool_choice="auto")


def test_completion_with_a_grammar_still_works(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_ctx=64)
    out = llm.create_completion("a", max_tokens=3, temperature=0.0,
                                grammar=LlamaGrammar.from_string('root ::= "xy" "z"'))
    assert isinstance(out, dict)
    assert out["choices"][0]["text"] == "xyz"


def test_server_refuses_a_deep_grammar_and_keeps_serving(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    from llama_rewire.server import ModelSettings, Settings, create_app

    path, _ = tiny("llama")
    settings = Settings(models=[ModelSettings(model=str(path), model_alias="t", n_ctx=64, verbose=False)])
    with running(create_app(settings)) as url:
        bad = httpx.post(f"{url}/v1/completions", json={
            "model": "t", "prompt": "a", "max_tokens": 2,
            "grammar": "root ::= " + "(" * 50000 + '"a"' + ")" * 50000}, timeout=60)
        assert bad.status_code == 400, bad.text
        assert "MAX_GRAMMAR_NESTING" in bad.text
        good = httpx.post(f"{url}/v1/completions", json={
            "model": "t", "prompt": "a", "max_tokens": 2, "temperature": 0.0,
            "grammar": 'root ::= "ok"'}, timeout=60)
        assert good.status_code == 200, good.text
        assert good.json()["choices"][0]["text"] == "ok"


def test_one_token_of_an_ambiguous_grammar_runs_under_a_work_budget(smollm2_path: Path) -> None:
    """Every advance stayed within the stack bounds, yet up to 1,024 stacks, each advanced through up to
    65,536 others for every character of every candidate token, made one token take seconds to tens of
    seconds (87 s for 8 tokens, a server's other slots stalled meanwhile). One token's work is bounded."""
    llm = Llama(str(smollm2_path), n_ctx=256, verbose=False)
    try:
        grammar = LlamaGrammar.from_string('root ::= "x" (([a-z]?){0,12}){0,40} "z"', verbose=False)
        start = time.monotonic()
        with pytest.raises(GrammarError, match="following it for one token takes more than"):
            llm.create_completion("Pick a word:", max_tokens=16, temperature=0.0, grammar=grammar)
        assert time.monotonic() - start < 60
        # the same shape, narrower, is followed as before
        narrow = LlamaGrammar.from_string('root ::= "x" (([a-z]?){0,2}){0,3} "z"', verbose=False)
        out = llm.create_completion("Pick a word:", max_tokens=8, temperature=0.0, grammar=narrow)
        assert out["choices"][0]["text"].startswith("x")
    finally:
        llm.close()


def test_a_grammar_llama_cpp_refuses_says_why_and_its_source_stays_out_of_the_log(
        capfd: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's parser printed its reason and the whole grammar (up to 256 KiB, from any request) to
    stderr, and the GrammarError said only "does not parse"."""
    filler = '"' + "q" * 20_000 + '"'
    cases = [
        (f'root ::= {filler} (([a-z]?){{0,12}}){{0,200}} "z"', "does not parse: number of rules .* exceeds"),
        (f"root ::= {filler} nothere", "does not parse: Undefined rule identifier 'nothere'"),
        (f"root ::= {filler} [a-", "does not parse: unexpected end of input"),
        (f"start ::= {filler}", "has no 'root' rule"),
    ]
    for text, why in cases:
        capfd.readouterr()
        with pytest.raises(GrammarError, match=why) as refused:
            LlamaGrammar.from_string(text, verbose=False)
        assert len(str(refused.value)) < 400
        err = capfd.readouterr().err
        assert "q" * 1000 not in err, err[:300]


def test_a_long_trigger_pattern_is_refused_not_a_crash(tiny_llm: Callable[..., Llama]) -> None:
    """std::regex compiles a lazy grammar's trigger pattern by recursion: 100,000 characters overflowed the
    stack (SIGSEGV) wherever the sampler was built."""
    from llama_rewire.engine import SamplingParams

    model = tiny_llm("llama").model
    ok = _core.Sampler(model, SamplingParams(grammar='root ::= "a"', grammar_lazy=True,
                                             trigger_patterns=("a" * 4096,)))
    assert ok.has_grammar
    with pytest.raises(GrammarError, match="trigger pattern is longer than 4096 bytes"):
        _core.Sampler(model, SamplingParams(grammar='root ::= "a"', grammar_lazy=True,
                                            trigger_patterns=("a" * 100_000,)))


def test_the_native_sampler_names_a_sampling_field_of_the_wrong_type(tiny_llm: Callable[..., Llama]) -> None:
    """The sampler reads its parameters field by field: a value of the wrong type is a TypeError naming the
    field (pybind's message, "Unable to cast ... to C++ type '?'", named neither)."""
    import dataclasses

    from llama_rewire.engine import SamplingParams

    model = tiny_llm("llama").model
    for name, value in (("top_k", None), ("grammar", 3), ("logit_bias", "x"), ("trigger_tokens", [None])):
        params = dataclasses.replace(SamplingParams(), **{name: value})
        with pytest.raises(TypeError, match=f"sampling parameters: {name} has a value of the wrong type"):
            _core.Sampler(model, params)
    with pytest.raises(AttributeError):
        _core.Sampler(model, object())  # type: ignore[arg-type]
