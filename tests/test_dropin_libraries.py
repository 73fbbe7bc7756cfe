"""What the libraries built on llama-cpp-python need from our server, with only the test extras installed:
the openai SDK (and langchain-openai, where it is installed) sending an arbitrary model name and leaving
the sampling fields to the server's defaults, which are llama-cpp-python's server's. Also the harness of
scripts/dropin_libraries.py that runs the libraries themselves (its table and its verdicts).

The full run of each library (langchain, llama-index, outlines, instructor, guidance) needs those
libraries and llama-cpp-python installed in separate environments: ``scripts/dropin_libraries.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from openai import OpenAI
from serving import running

from llama_rewire.server import ModelSettings, Settings, create_app

ROOT = Path(__file__).resolve().parent.parent
SEED = 1234
# llama-cpp-python 0.3.36's server (llama_cpp/server/types.py): what a request that leaves them out gets
PEER_SAMPLING_DEFAULTS = {
    "temperature": 0.8, "top_p": 0.95, "min_p": 0.05, "top_k": 40, "repeat_penalty": 1.1,
    "presence_penalty": 0.0, "frequency_penalty": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def base_url(tiny: Callable[[str], tuple[Path, Any]]) -> Iterator[str]:
    path, _ = tiny("llama")
    model = ModelSettings(model=str(path), model_alias="tiny", n_ctx=256, chat_format="chatml", seed=SEED)
    settings = Settings(models=[model])
    with running(create_app(settings)) as url:
        yield url


@pytest.fixture()
def client(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url + "/v1", api_key="sk-no-key-required", max_retries=0, timeout=60) as c:
        yield c


# the tiny model goes on past 40 tokens after this prompt, greedy or sampled (after others it stops early)
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": PROMPT}]


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gpt-4o-mini", "local-model"])
def test_any_model_name_is_served_by_the_single_model(client: OpenAI, model: str) -> None:
    """Clients written for OpenAI send their own model name; a server with one model answers it with that
    model, as llama-cpp-python's does (the same text as naming the model's alias)."""
    chat = {"messages": CHAT, "temperature": 0, "max_tokens": 6}
    named = client.chat.completions.create(model="tiny", **chat).choices[0].message.content
    other = client.chat.completions.create(model=model, **chat).choices[0].message.content
    assert isinstance(other, str) and other == named
    completion = {"prompt": PROMPT, "temperature": 0, "max_tokens": 6}
    text = client.completions.create(model=model, **completion).choices[0].text
    assert text == client.completions.create(model="tiny", **completion).choices[0].text


def test_models_list_names_the_model_a_client_can_use(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids, "no model listed"
    out = client.completions.create(model=ids[0], prompt=PROMPT, temperature=0, max_tokens=3)
    assert out.choices[0].text is not None


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_sampling_fields_left_out_are_llama_cpp_python_servers_defaults(
    client: OpenAI, endpoint: str
) -> None:
    """A request that sets no sampling field samples as one that spells out llama-cpp-python's server
    defaults (temperature 0.8, top_p 0.95, min_p 0.05, top_k 40, repeat_penalty 1.1), same seed."""
    fields = {"seed": SEED, "max_tokens": 24}
    if endpoint == "chat":

        def run(**extra: Any) -> str:
            out = client.chat.completions.create(
                model="tiny", messages=CHAT, **fields, extra_body=extra or None
            )
            return str(out.choices[0].message.content)
    else:

        def run(**extra: Any) -> str:
            out = client.completions.create(model="tiny", prompt=PROMPT, **fields, extra_body=extra or None)
            return out.choices[0].text

    explicit = run(**PEER_SAMPLING_DEFAULTS)
    assert explicit == run(**PEER_SAMPLING_DEFAULTS), "the same seed gave different text"
    assert run() == explicit
    # and greedy differs from them, so the comparison above is not between two greedy runs
    assert run(temperature=0) != explicit or run(temperature=0, repeat_penalty=1.0) != explicit


def test_completion_without_max_tokens_stops_at_sixteen(client: OpenAI) -> None:
    """llama-cpp-python's server gives a completion that sets no max_tokens the OpenAI API's default of 16
    tokens: the same text as asking for 16, cut for length."""
    out = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, seed=SEED)
    sixteen = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, seed=SEED, max_tokens=16)
    longer = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, seed=SEED, max_tokens=40)
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].text == sixteen.choices[0].text != longer.choices[0].text


def test_langchain_openai_against_the_server(base_url: str) -> None:
    why = ("langchain-openai is not installed (a third-party library outside the test extras; "
           "scripts/dropin_libraries.py runs it in its own environment)")  # fmt: skip
    langchain_openai = pytest.importorskip("langchain_openai", reason=why)
    llm = langchain_openai.ChatOpenAI(
        base_url=base_url + "/v1",
        api_key="sk-no-key-required",
        model="local-model",
        temperature=0,
        max_tokens=6,
        max_retries=0,
    )
    text = llm.invoke(PROMPT).content
    assert isinstance(text, str) and text
    assert "".join(str(c.content) for c in llm.stream(PROMPT)) == text


# the harness of scripts/dropin_libraries.py ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dropin() -> ModuleType:
    path = ROOT / "scripts" / "dropin_libraries.py"
    spec = importlib.util.spec_from_file_location("dropin_libraries", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dropin_libraries"] = module
    spec.loader.exec_module(module)
    return module


def _records(dropin: ModuleType, outputs: dict[str, Any], status: str = "pass") -> list[dict[str, Any]]:
    return [
        {"library": "tools", "case": c, "model": "m", "status": status, "output": o}
        for c, o in outputs.items()
    ]


def test_every_library_has_cases_with_unique_names(dropin: ModuleType) -> None:
    names = [(c.library, c.name) for c in dropin.CASES]
    assert len(names) == len(set(names))
    assert {c.library for c in dropin.CASES} == set(dropin.LIBRARIES)


def test_table_counts_passes_and_compares_only_deterministic_peer_output(dropin: ModuleType) -> None:
    cases = [c.name for c in dropin.CASES if c.library == "tools"]
    assert len(cases) >= 3
    a, b, c = cases[:3]
    peer1 = dropin.Run("peer", "py", _records(dropin, {a: "x", b: "y", c: "z"}))
    peer2 = dropin.Run("peer", "py", _records(dropin, {a: "x", b: "other", c: "z"}))
    failed = {"library": "tools", "case": c, "model": "m", "status": "fail", "error": "ValueError: bad",
              "where": ["lib.py:1 in f: call()"]}  # fmt: skip
    ours = dropin.Run("ours", "py", [*_records(dropin, {a: "x", b: "y"}), failed])
    text = dropin.table([peer1, peer2], ours, ["tools"], ["m"])
    n = len(cases)
    assert f"| tools | m | 3/{n} | 2/{n} | 1/1 |" in text  # b: the peer varies, not compared
    assert f"| tools | {b} | m | pass | pass | peer varies |" in text
    assert f"| tools | {a} | m | pass | pass | yes |" in text
    assert "`ValueError: bad` at `lib.py:1 in f: call()`" in text


def test_skipped_library_is_counted_as_not_installed(dropin: ModuleType) -> None:
    cases = [c.name for c in dropin.CASES if c.library == "tools"]
    skipped = [{"library": "tools", "case": c, "model": "m", "status": "skip", "error": "not installed"}
               for c in cases]  # fmt: skip
    text = dropin.table(
        [dropin.Run("peer", "py", skipped)], dropin.Run("ours", "py", skipped), ["tools"], ["m"]
    )
    assert f"| tools | m | 0/{len(cases)} ({len(cases)} not installed) |" in text


def test_embeddings_compare_by_cosine(dropin: ModuleType) -> None:
    assert dropin.same_output([1.0, 2.0, 3.0], [1.0, 2.0, 3.0001])
    assert not dropin.same_output([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert not dropin.same_output([1.0, 2.0], [1.0, 2.0, 3.0])
    assert dropin.same_output("Paris", "Paris") and not dropin.same_output("Paris", "Paris.")


def test_key_lines_name_the_library_call_and_our_frame(dropin: ModuleType) -> None:
    import llama_rewire

    try:
        llama_rewire.Llama(model_path=str(ROOT / "no-such-model.gguf"))
    except (ValueError, RuntimeError, OSError) as e:
        lines = dropin.key_lines(e)
    else:
        pytest.fail("a missing model file loaded")
    assert "test_dropin_libraries.py:" in lines[0]
    assert any("llama_rewire/" in line for line in lines[1:])


def test_a_group_run_again_replaces_its_records(dropin: ModuleType) -> None:
    first = dropin.Run("ours", "py", [
        {"library": "tools", "case": "a", "model": "m", "status": "fail", "error": "crashed"},
        {"library": "tools", "case": "a", "model": "n", "status": "pass", "output": "x"},
    ])  # fmt: skip
    again = dropin.Run("ours", "py", [{"library": "tools", "case": "a", "model": "m", "status": "pass"}])
    records = dropin.merged([first, again]).records
    assert sorted((r["model"], r["status"]) for r in records) == [("m", "pass"), ("n", "pass")]
