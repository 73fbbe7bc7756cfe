"""The cases of scripts/dropin_libraries.py: each library's documented usage (README and docs examples),
greedy, with ``llama_cpp`` resolving to the backend under test. A case gets a :class:`Context` and returns
what was generated (text, or a vector for embeddings); it fails by raising.

The libraries are imported inside the cases, so that this module imports with the standard library only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 24
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France? Answer in one sentence."


@dataclass
class Context:
    """What a case gets: the backend, the model, and (for the server libraries) the server's base URL."""

    backend: str
    model: str
    model_path: str
    base_url: str = ""


@dataclass(frozen=True)
class Case:
    library: str
    name: str
    run: Callable[[Context], Any]


CASES: list[Case] = []


def case(library: str, name: str) -> Callable[[Callable[[Context], Any]], Callable[[Context], Any]]:
    def register(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
        CASES.append(Case(library, name, fn))
        return fn

    return register


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris?"}]
CHARACTER_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def pydantic_models() -> dict[str, Any]:
    """The pydantic models the examples use, made when a case runs (pydantic is the libraries' dependency)."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Character(BaseModel):
        name: str = Field(max_length=20)
        age: int

    class UserDetail(BaseModel):
        name: str = Field(max_length=20)
        age: int

    class Joke(BaseModel):
        setup: str = Field(description="the question of the joke", max_length=80)
        punchline: str = Field(description="the answer", max_length=80)

    class WeatherInput(BaseModel):
        """Get the current weather in a city."""

        location: str = Field(description="The city, e.g. Paris")
        unit: Literal["celsius", "fahrenheit"]

    return {"Character": Character, "UserDetail": UserDetail, "Joke": Joke, "WeatherInput": WeatherInput}


def llama(ctx: Context, **kwargs: Any) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=ctx.model_path, **{"n_ctx": 2048, "verbose": False, "seed": 0, **kwargs})


def tool_call(message: dict[str, Any]) -> str:
    """The first tool call of a chat message as `name(arguments)`; arguments must be JSON."""
    calls = message.get("tool_calls") or []
    if not calls:
        raise AssertionError(f"no tool call in the message: {message.get('content')!r}")
    function = calls[0]["function"]
    json.loads(function["arguments"])
    return f"{function['name']}({function['arguments']})"


# langchain-community ------------------------------------------------------------------------------------


def lc_llm(ctx: Context, **kwargs: Any) -> Any:
    from langchain_community.llms import LlamaCpp

    return LlamaCpp(
        model_path=ctx.model_path,
        temperature=0,
        max_tokens=MAX_TOKENS,
        n_ctx=1024,
        seed=0,
        verbose=False,
        **kwargs,
    )


def lc_chat(ctx: Context, **kwargs: Any) -> Any:
    from langchain_community.chat_models import ChatLlamaCpp

    return ChatLlamaCpp(
        model_path=ctx.model_path,
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", MAX_TOKENS),
        n_ctx=1024,
        seed=0,
        verbose=False,
        **kwargs,
    )


LC_MESSAGES = [("system", "You are a helpful assistant."), ("human", QUESTION)]


@case("langchain", "LlamaCpp.invoke")
def _lc_invoke(ctx: Context) -> str:
    return str(lc_llm(ctx).invoke(PROMPT))


@case("langchain", "LlamaCpp.stream")
def _lc_stream(ctx: Context) -> str:
    return "".join(lc_llm(ctx).stream(PROMPT))


@case("langchain", "PromptTemplate | LlamaCpp")
def _lc_chain(ctx: Context) -> str:
    from langchain_core.prompts import PromptTemplate

    prompt = PromptTemplate.from_template("Question: {question}\n\nAnswer: Let's work this out step by step.")
    return str((prompt | lc_llm(ctx)).invoke({"question": "What is 2 + 2?"}))


@case("langchain", "LlamaCpp(grammar=...)")
def _lc_grammar(ctx: Context) -> str:
    return str(
        lc_llm(ctx, grammar='root ::= ("yes" | "no")').invoke("Is Paris in France? Answer yes or no: ")
    )


@case("langchain", "ChatLlamaCpp.invoke")
def _lc_chat_invoke(ctx: Context) -> str:
    return str(lc_chat(ctx).invoke(LC_MESSAGES).content)


@case("langchain", "ChatLlamaCpp.stream")
def _lc_chat_stream(ctx: Context) -> str:
    return "".join(str(chunk.content) for chunk in lc_chat(ctx).stream(LC_MESSAGES))


@case("langchain", "ChatLlamaCpp.bind_tools")
def _lc_chat_tools(ctx: Context) -> str:
    weather = pydantic_models()["WeatherInput"]
    llm = lc_chat(ctx, max_tokens=96).bind_tools(
        tools=[weather], tool_choice={"type": "function", "function": {"name": "WeatherInput"}}
    )
    message = llm.invoke("what is the weather like in Paris")
    if not message.tool_calls:
        raise AssertionError(f"no tool call: {message.content!r}")
    return json.dumps(message.tool_calls[0]["args"])


@case("langchain", "ChatLlamaCpp.with_structured_output")
def _lc_chat_structured(ctx: Context) -> str:
    joke = pydantic_models()["Joke"]
    result = lc_chat(ctx, max_tokens=128).with_structured_output(joke).invoke("Tell me a joke about cats")
    return str(result.model_dump_json() if hasattr(result, "model_dump_json") else json.dumps(result))


@case("langchain", "LlamaCppEmbeddings.embed_query")
def _lc_embed_query(ctx: Context) -> list[float]:
    from langchain_community.embeddings import LlamaCppEmbeddings

    return [
        float(v) for v in LlamaCppEmbeddings(model_path=ctx.model_path, verbose=False).embed_query("Hello")
    ]


@case("langchain", "LlamaCppEmbeddings.embed_documents")
def _lc_embed_documents(ctx: Context) -> list[float]:
    from langchain_community.embeddings import LlamaCppEmbeddings

    vectors = LlamaCppEmbeddings(model_path=ctx.model_path, verbose=False).embed_documents(["Hello", "Paris"])
    if len(vectors) != 2 or len(vectors[0]) != len(vectors[1]):
        raise AssertionError(f"two vectors of one size expected, got {[len(v) for v in vectors]}")
    return [float(v) for vector in vectors for v in vector]


# llama-index ----------------------------------------------------------------------------------------------


def li_llm(ctx: Context) -> Any:
    from llama_index.llms.llama_cpp import LlamaCPP

    return LlamaCPP(
        model_path=ctx.model_path,
        temperature=0.0,
        max_new_tokens=MAX_TOKENS,
        context_window=2048,
        model_kwargs={"seed": 0},
        verbose=False,
    )


def li_messages() -> list[Any]:
    from llama_index.core.llms import ChatMessage

    return [
        ChatMessage(role="system", content="You are a helpful assistant."),
        ChatMessage(role="user", content=QUESTION),
    ]


@case("llama-index", "LlamaCPP.complete")
def _li_complete(ctx: Context) -> str:
    return li_llm(ctx).complete(PROMPT).text


@case("llama-index", "LlamaCPP.stream_complete")
def _li_stream_complete(ctx: Context) -> str:
    return "".join(r.delta or "" for r in li_llm(ctx).stream_complete(PROMPT))


@case("llama-index", "LlamaCPP.chat")
def _li_chat(ctx: Context) -> str:
    return str(li_llm(ctx).chat(li_messages()).message.content)


@case("llama-index", "LlamaCPP.stream_chat")
def _li_stream_chat(ctx: Context) -> str:
    return "".join(r.delta or "" for r in li_llm(ctx).stream_chat(li_messages()))


@case("llama-index", "LlamaCPP.acomplete")
def _li_acomplete(ctx: Context) -> str:
    return asyncio.run(li_llm(ctx).acomplete(PROMPT)).text


@case("llama-index", "LlamaCPP.achat")
def _li_achat(ctx: Context) -> str:
    return str(asyncio.run(li_llm(ctx).achat(li_messages())).message.content)


@case("llama-index", "LlamaCPP.metadata")
def _li_metadata(ctx: Context) -> str:
    meta = li_llm(ctx).metadata
    return f"context_window={meta.context_window} num_output={meta.num_output}"


# outlines -------------------------------------------------------------------------------------------------


def ol_model(ctx: Context) -> Any:
    import outlines

    return outlines.from_llamacpp(llama(ctx))


GREEDY_OUTLINES = {"temperature": 0.0, "seed": 0}


@case("outlines", "text")
def _ol_text(ctx: Context) -> str:
    return str(ol_model(ctx)(QUESTION, max_tokens=MAX_TOKENS, **GREEDY_OUTLINES))


@case("outlines", "stream")
def _ol_stream(ctx: Context) -> str:
    return "".join(ol_model(ctx).stream(QUESTION, max_tokens=MAX_TOKENS, **GREEDY_OUTLINES))


@case("outlines", "Chat input")
def _ol_chat(ctx: Context) -> str:
    from outlines.inputs import Chat

    chat = Chat(
        [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": QUESTION}]
    )
    return str(ol_model(ctx)(chat, max_tokens=MAX_TOKENS, **GREEDY_OUTLINES))


@case("outlines", "pydantic model")
def _ol_pydantic(ctx: Context) -> str:
    character = pydantic_models()["Character"]
    result = ol_model(ctx)("Create a fantasy character.", character, max_tokens=96, **GREEDY_OUTLINES)
    return character.model_validate_json(result).model_dump_json()


@case("outlines", "JsonSchema")
def _ol_json_schema(ctx: Context) -> str:
    from outlines.types import JsonSchema

    result = ol_model(ctx)(
        "Create a fantasy character.",
        JsonSchema(json.dumps(CHARACTER_SCHEMA)),
        max_tokens=96,
        **GREEDY_OUTLINES,
    )
    json.loads(result)
    return str(result)


@case("outlines", "Regex")
def _ol_regex(ctx: Context) -> str:
    import re

    from outlines.types import Regex

    result = ol_model(ctx)("What is 12 + 30?", Regex(r"[0-9]{1,3}"), max_tokens=8, **GREEDY_OUTLINES)
    if not re.fullmatch(r"[0-9]{1,3}", result):
        raise AssertionError(f"{result!r} does not match the regex")
    return str(result)


@case("outlines", "choice (Literal)")
def _ol_choice(ctx: Context) -> str:
    from typing import Literal

    result = ol_model(ctx)(
        "Review: I loved this film, a masterpiece. Is this review positive or negative?",
        Literal["Positive", "Negative"],
        max_tokens=8,
        **GREEDY_OUTLINES,
    )
    if result not in ("Positive", "Negative"):
        raise AssertionError(f"{result!r} is not one of the choices")
    return str(result)


# instructor -----------------------------------------------------------------------------------------------

EXTRACT = [{"role": "user", "content": "Extract `Jason is 30 years old`"}]


def ins_create(ctx: Context, mode_name: str, **kwargs: Any) -> Callable[..., Any]:
    import instructor

    llm = llama(ctx, **kwargs)
    return instructor.patch(
        create=llm.create_chat_completion_openai_v1, mode=getattr(instructor.Mode, mode_name)
    )


@case("instructor", "JSON_SCHEMA (documented: chatml, prompt lookup draft)")
def _ins_documented(ctx: Context) -> str:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    create = ins_create(
        ctx,
        "JSON_SCHEMA",
        chat_format="chatml",
        logits_all=True,
        draft_model=LlamaPromptLookupDecoding(num_pred_tokens=2),
    )
    user = create(
        messages=EXTRACT, response_model=pydantic_models()["UserDetail"], temperature=0, max_tokens=96
    )
    return str(user.model_dump_json())


@case("instructor", "JSON_SCHEMA (model's template)")
def _ins_json_schema(ctx: Context) -> str:
    create = ins_create(ctx, "JSON_SCHEMA")
    user = create(
        messages=EXTRACT, response_model=pydantic_models()["UserDetail"], temperature=0, max_tokens=96
    )
    return str(user.model_dump_json())


@case("instructor", "Partial, stream=True")
def _ins_partial(ctx: Context) -> str:
    import instructor

    create = ins_create(ctx, "JSON_SCHEMA")
    stream = create(
        messages=EXTRACT,
        response_model=instructor.Partial[pydantic_models()["UserDetail"]],
        stream=True,
        temperature=0,
        max_tokens=96,
    )
    partials = list(stream)
    if not partials:
        raise AssertionError("the stream gave nothing")
    return str(partials[-1].model_dump_json())


@case("instructor", "Iterable")
def _ins_iterable(ctx: Context) -> str:
    from typing import Iterable  # noqa: UP035 - as the docs write it, which instructor recognises

    user_detail = pydantic_models()["UserDetail"]
    create = ins_create(ctx, "JSON_SCHEMA")
    users = create(
        messages=[{"role": "user", "content": "Extract the users: Jason is 30, Sarah is 25."}],
        response_model=Iterable[user_detail],
        temperature=0,
        max_tokens=128,
    )
    return json.dumps([u.model_dump() for u in users])


@case("instructor", "Mode.JSON")
def _ins_json(ctx: Context) -> str:
    create = ins_create(ctx, "JSON")
    user = create(
        messages=EXTRACT, response_model=pydantic_models()["UserDetail"], temperature=0, max_tokens=96
    )
    return str(user.model_dump_json())


@case("instructor", "Mode.MD_JSON")
def _ins_md_json(ctx: Context) -> str:
    create = ins_create(ctx, "MD_JSON")
    user = create(
        messages=EXTRACT, response_model=pydantic_models()["UserDetail"], temperature=0, max_tokens=96
    )
    return str(user.model_dump_json())


# guidance -------------------------------------------------------------------------------------------------


def gd_model(ctx: Context) -> Any:
    from guidance import models

    return models.LlamaCpp(ctx.model_path, echo=False, n_ctx=2048, verbose=False)


@case("guidance", "gen")
def _gd_gen(ctx: Context) -> str:
    from guidance import gen

    return str((gd_model(ctx) + PROMPT + gen("answer", max_tokens=MAX_TOKENS))["answer"])


@case("guidance", "gen(stop=)")
def _gd_stop(ctx: Context) -> str:
    from guidance import gen

    lm = gd_model(ctx) + "Q: Name three colors.\nA:" + gen("answer", stop="\n", max_tokens=MAX_TOKENS)
    return str(lm["answer"])


@case("guidance", "select")
def _gd_select(ctx: Context) -> str:
    from guidance import select

    return str(
        (gd_model(ctx) + "Is Paris in France? Answer: " + select(["yes", "no"], name="choice"))["choice"]
    )


@case("guidance", "gen(regex=)")
def _gd_regex(ctx: Context) -> str:
    from guidance import gen

    return str((gd_model(ctx) + "12 + 30 = " + gen("n", regex=r"[0-9]{1,3}", max_tokens=8))["n"])


@case("guidance", "json(schema=)")
def _gd_json(ctx: Context) -> str:
    from guidance import json as gen_json

    character = pydantic_models()["Character"]
    lm = gd_model(ctx) + "A fantasy character as JSON: " + gen_json(name="c", schema=character, max_tokens=96)
    return character.model_validate_json(lm["c"]).model_dump_json()


@case("guidance", "chat roles")
def _gd_chat(ctx: Context) -> str:
    from guidance import assistant, gen, system, user

    lm = gd_model(ctx)
    with system():
        lm += "You are a helpful assistant."
    with user():
        lm += QUESTION
    with assistant():
        lm += gen("answer", max_tokens=MAX_TOKENS)
    return str(lm["answer"])


# tool calls through Llama.create_chat_completion --------------------------------------------------------


@case("tools", "forced (named tool_choice)")
def _tools_forced(ctx: Context) -> str:
    out = llama(ctx).create_chat_completion(
        WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    return tool_call(out["choices"][0]["message"])


@case("tools", "forced, stream")
def _tools_forced_stream(ctx: Context) -> str:
    chunks = llama(ctx).create_chat_completion(
        WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, arguments = "", ""
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            name += call["function"].get("name") or ""
            arguments += call["function"].get("arguments") or ""
    return tool_call({"tool_calls": [{"function": {"name": name, "arguments": arguments}}]})


@case("tools", "required")
def _tools_required(ctx: Context) -> str:
    out = llama(ctx).create_chat_completion(
        WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=64
    )
    return tool_call(out["choices"][0]["message"])


@case("tools", "chatml-function-calling, forced")
def _tools_function_calling(ctx: Context) -> str:
    out = llama(ctx, chat_format="chatml-function-calling").create_chat_completion(
        WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    return tool_call(out["choices"][0]["message"])


# the openai SDK against the server -------------------------------------------------------------------------

# an arbitrary name: a server with one model answers whatever model a request names
SERVED_MODEL = "gpt-4o-mini"


def oa_client(ctx: Context) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=ctx.base_url + "/v1", api_key="sk-no-key-required", max_retries=0, timeout=300)


def oa_chat(ctx: Context, **kwargs: Any) -> Any:
    params = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        **kwargs,
    }
    return oa_client(ctx).chat.completions.create(**params)


@case("openai", "models.list")
def _oa_models(ctx: Context) -> str:
    models = list(oa_client(ctx).models.list())
    if not models:
        raise AssertionError("no model listed")
    return f"{len(models)} model(s)"


@case("openai", "chat.completions.create")
def _oa_chat(ctx: Context) -> str:
    return str(oa_chat(ctx).choices[0].message.content)


@case("openai", "chat.completions.create(stream=True)")
def _oa_chat_stream(ctx: Context) -> str:
    return "".join(c.choices[0].delta.content or "" for c in oa_chat(ctx, stream=True) if c.choices)


@case("openai", "chat, default sampling")
def _oa_chat_default(ctx: Context) -> str:
    out = oa_client(ctx).chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS
    )
    if not isinstance(out.choices[0].message.content, str):
        raise AssertionError("no text")
    return "(sampled)"


@case("openai", "completions.create")
def _oa_completion(ctx: Context) -> str:
    out = oa_client(ctx).completions.create(
        model=SERVED_MODEL, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS
    )
    return str(out.choices[0].text)


@case("openai", "completions.create(stream=True)")
def _oa_completion_stream(ctx: Context) -> str:
    chunks = oa_client(ctx).completions.create(
        model=SERVED_MODEL, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    return "".join(c.choices[0].text for c in chunks if c.choices)


@case("openai", "completions stop + usage")
def _oa_completion_stop(ctx: Context) -> str:
    out = oa_client(ctx).completions.create(
        model=SERVED_MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=MAX_TOKENS, stop=[", 8"]
    )
    usage = out.usage
    if usage is None or usage.prompt_tokens <= 0 or usage.completion_tokens <= 0:
        raise AssertionError(f"usage: {usage}")
    return f"{out.choices[0].text!r} finish={out.choices[0].finish_reason}"


@case("openai", "response_format json_object")
def _oa_json_object(ctx: Context) -> str:
    out = oa_chat(
        ctx,
        messages=[{"role": "user", "content": "Describe a fantasy character in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=96,
    )
    text = str(out.choices[0].message.content)
    json.loads(text)
    return text


@case("openai", "response_format json_schema")
def _oa_json_schema(ctx: Context) -> str:
    out = oa_chat(
        ctx,
        messages=[{"role": "user", "content": "Create a fantasy character."}],
        max_tokens=96,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "character", "schema": CHARACTER_SCHEMA},
        },
    )
    text = str(out.choices[0].message.content)
    json.loads(text)
    return text


@case("openai", "chat.completions.parse (pydantic)")
def _oa_parse(ctx: Context) -> str:
    client = oa_client(ctx)
    character = pydantic_models()["Character"]
    parse = (
        client.chat.completions.parse
        if hasattr(client.chat.completions, "parse")
        else client.beta.chat.completions.parse
    )
    out = parse(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": "Create a fantasy character."}],
        response_format=character,
        temperature=0,
        max_tokens=96,
    )
    parsed = out.choices[0].message.parsed
    if parsed is None:
        raise AssertionError(f"not parsed: {out.choices[0].message.content!r}")
    return str(parsed.model_dump_json())


@case("openai", "tools, forced")
def _oa_tools_forced(ctx: Context) -> str:
    out = oa_chat(
        ctx,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    return tool_call(out.choices[0].message.model_dump())


@case("openai", "tools, required")
def _oa_tools_required(ctx: Context) -> str:
    out = oa_chat(ctx, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=64)
    return tool_call(out.choices[0].message.model_dump())


@case("openai", "logprobs")
def _oa_logprobs(ctx: Context) -> str:
    out = oa_chat(ctx, logprobs=True, top_logprobs=2, max_tokens=4)
    content = out.choices[0].logprobs.content if out.choices[0].logprobs else None
    if not content:
        raise AssertionError("no logprobs")
    return json.dumps([[t.token, [a.token for a in t.top_logprobs]] for t in content])


# langchain-openai against the server ------------------------------------------------------------------------


# langchain-openai sends max_tokens as max_completion_tokens: a server that ignores that field generates
# up to the end of the context, which a minute bounds
LANGCHAIN_OPENAI_TIMEOUT_S = 60


def lco_chat(ctx: Context, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=ctx.base_url + "/v1",
        api_key="sk-no-key-required",
        model="local-model",
        temperature=0,
        max_retries=0,
        timeout=LANGCHAIN_OPENAI_TIMEOUT_S,
        **{"max_tokens": MAX_TOKENS, **kwargs},
    )


@case("langchain-openai", "ChatOpenAI.invoke")
def _lco_invoke(ctx: Context) -> str:
    return str(lco_chat(ctx).invoke(LC_MESSAGES).content)


@case("langchain-openai", "ChatOpenAI.stream")
def _lco_stream(ctx: Context) -> str:
    return "".join(str(c.content) for c in lco_chat(ctx).stream(LC_MESSAGES))


@case("langchain-openai", "ChatOpenAI.batch")
def _lco_batch(ctx: Context) -> str:
    out = lco_chat(ctx).batch([QUESTION, "What is 2 + 2?"])
    return json.dumps([str(m.content) for m in out])


@case("langchain-openai", "with_structured_output json_schema")
def _lco_structured_schema(ctx: Context) -> str:
    out = lco_chat(ctx, max_tokens=128).with_structured_output(
        pydantic_models()["Joke"], method="json_schema"
    )
    return str(out.invoke("Tell me a joke about cats").model_dump_json())


@case("langchain-openai", "with_structured_output function_calling")
def _lco_structured_tools(ctx: Context) -> str:
    out = lco_chat(ctx, max_tokens=128).with_structured_output(
        pydantic_models()["Joke"], method="function_calling"
    )
    return str(out.invoke("Tell me a joke about cats").model_dump_json())


@case("langchain-openai", "with_structured_output json_mode")
def _lco_structured_json(ctx: Context) -> str:
    out = lco_chat(ctx, max_tokens=128).with_structured_output(pydantic_models()["Joke"], method="json_mode")
    return str(
        out.invoke("Tell me a joke about cats, as JSON with the keys setup and punchline").model_dump_json()
    )


@case("langchain-openai", "bind_tools(tool_choice=name)")
def _lco_tools(ctx: Context) -> str:
    weather = pydantic_models()["WeatherInput"]
    message = (
        lco_chat(ctx, max_tokens=96)
        .bind_tools([weather], tool_choice="WeatherInput")
        .invoke("what is the weather like in Paris")
    )
    if not message.tool_calls:
        raise AssertionError(f"no tool call: {message.content!r}")
    return json.dumps(message.tool_calls[0]["args"])


@case("langchain-openai", "OpenAI (completions).invoke")
def _lco_completion(ctx: Context) -> str:
    from langchain_openai import OpenAI

    llm = OpenAI(
        base_url=ctx.base_url + "/v1",
        api_key="sk-no-key-required",
        model="local-model",
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=LANGCHAIN_OPENAI_TIMEOUT_S,
    )
    return str(llm.invoke(PROMPT))
