"""Speculative decoding (``draft_model``), top-level llama_types names and two chat-format renderings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from checks import BATCH_TIE, agree_up_to_a_tie

import llama_rewire
from llama_rewire import Llama, LlamaDraftModel, LlamaGrammar, LlamaPromptLookupDecoding, llama_types
from llama_rewire.llama_chat_format import format_mistral_instruct, hf_tokenizer_config_to_chat_formatter

DOC = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
       "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
       "The tower is 330 metres tall and was the tallest man-made structure in the world until 1930.")
# input-grounded: the answer copies the text (greedy margins well above batched-vs-single rounding)
COPY = f"Copy the text.\n\nText: {DOC}\n\nCopy: The Eiffel Tower is"


class Counting(LlamaDraftModel):
    """A draft model that counts its calls (one per verifying decode) and the tokens it proposed."""

    def __init__(self, inner: LlamaDraftModel) -> None:
        self.inner = inner
        self.calls = 0
        self.proposed = 0

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        out = self.inner(input_ids)
        self.calls += 1
        self.proposed += len(out)
        return out


class Fixed(LlamaDraftModel):
    """Always proposes the same tokens."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = np.array(tokens, dtype=np.intc)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        return self.tokens


def _text(llm: Llama, prompt: str = COPY, **kwargs: Any) -> str:
    out = llm(prompt, **{"max_tokens": 48, "temperature": 0.0, **kwargs})
    assert isinstance(out, dict)
    return str(out["choices"][0]["text"])


# -- the draft model ----------------------------------------------------------------------------------


def test_prompt_lookup_drafts_the_continuation_of_the_longest_earlier_ngram() -> None:
    find = LlamaPromptLookupDecoding.find_candidate_pred_tokens
    ids = np.array([5, 6, 7, 8, 9, 6, 7, 1, 2, 6, 7], dtype=np.intc)
    assert find(ids, 2, 3).tolist() == [8, 9, 6]           # (6, 7) first at 1
    assert find(ids, 1, 2).tolist() == [8, 9]              # (7,) first at 2
    assert find(np.array([1, 2, 3, 9, 2, 3]), 3, 5).tolist() == [9, 2, 3]  # no (1 2 3) after: falls to (2 3)
    assert find(np.array([1, 2, 3]), 2, 4).tolist() == []
    assert find(np.array([4]), 2, 4).tolist() == []
    assert LlamaPromptLookupDecoding(num_pred_tokens=1)(np.array([3, 4, 3], dtype=np.intc)).tolist() == [4]
    with pytest.raises(ValueError, match="num_pred_tokens"):
        LlamaPromptLookupDecoding(num_pred_tokens=0)


def test_draft_model_must_be_callable(smollm2_path: Path) -> None:
    with pytest.raises(TypeError, match="draft_model"):
        Llama(str(smollm2_path), n_ctx=64, verbose=False, draft_model=3)  # type: ignore[arg-type]


class OutOfVocabulary(LlamaDraftModel):
    """Guesses ids that are no token: the draft ends there, nothing is decoded from them."""

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        return np.array([-1, 10**9], dtype=np.int64)


def test_bad_draft_ids_and_sample_positions_are_errors_or_ignored(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=512, verbose=False) as plain, \
            Llama(str(smollm2_path), n_ctx=512, verbose=False, draft_model=OutOfVocabulary()) as bad:
        assert _text(bad, max_tokens=12) == _text(plain, max_tokens=12)
        plain.reset()
        plain.eval(plain.tokenize(b"Hello there"))
        for idx in (0, -5, 10**6):  # without logits_all only the last position's logits are kept
            with pytest.raises(ValueError, match="idx="):
                plain.sample(idx=idx)
        assert 0 <= plain.sample(idx=plain.n_tokens - 1) < plain.n_vocab()  # still usable


# -- the same text, fewer decodes ----------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.parametrize("real_model_path", ["smollm2", "gemma3-270m"], indirect=True)
def test_greedy_text_is_the_same_with_prompt_lookup(real_model_path: Path) -> None:
    plain = Llama(str(real_model_path), n_ctx=512, verbose=False)
    draft = Counting(LlamaPromptLookupDecoding())
    spec = Llama(str(real_model_path), n_ctx=512, verbose=False, draft_model=draft)
    expected = _text(plain)
    assert _text(spec) == expected
    n_tokens = len(spec.tokenize(expected.encode(), add_bos=False))
    # one verifying decode per draft call: most tokens came from accepted drafts
    assert draft.calls < n_tokens / 2


@pytest.mark.real_model
def test_same_text_under_a_wiring(smollm2_path: Path) -> None:
    """The verifying decodes run the rewired graph (a wiring mild enough to keep the greedy margins)."""
    wiring = "20-29:relu"
    plain = Llama(str(smollm2_path), n_ctx=512, verbose=False, activations=wiring)
    spec = Llama(str(smollm2_path), n_ctx=512, verbose=False, draft_model=LlamaPromptLookupDecoding())
    original = _text(spec)
    unwired = spec.last_logits.copy()
    spec.set_activations(wiring)
    assert _text(spec) == _text(plain)
    assert np.abs(spec.last_logits - unwired).max() > 0.1  # the same tokens, other logits
    spec.set_activations(None)
    assert _text(spec) == original


@pytest.mark.real_model
def test_rejected_drafts_leave_no_trace(smollm2_path: Path) -> None:
    """A draft that is always wrong: every verifying decode is rolled back, the text is plain decoding's,
    and the KV cache left behind serves a following completion (prefix reuse) as a fresh model would."""
    plain = Llama(str(smollm2_path), n_ctx=512, verbose=False)
    nonsense = Fixed(plain.tokenize(b" zebra quantum", add_bos=False) * 3)
    spec = Llama(str(smollm2_path), n_ctx=512, verbose=False, draft_model=nonsense)
    # a verifying decode puts several rows through each matmul, and on some CPU paths (the repacked Q4
    # kernels work on groups of rows) a row's sums then run in another order than alone: the greedy
    # texts agree up to a near-tie (each side's pick the other's runner-up, by less than BATCH_TIE)
    agree_up_to_a_tie(_steps(spec), _steps(plain), BATCH_TIE)
    follow = COPY + " a wrought-iron lattice tower. It is"
    fresh = Llama(str(smollm2_path), n_ctx=512, verbose=False)
    agree_up_to_a_tie(_steps(spec, follow), _steps(fresh, follow), BATCH_TIE)


def _steps(llm: Llama, prompt: str = COPY) -> list[tuple[str, str, float]]:
    """A greedy completion's steps: each token, its runner-up and the gap between their logprobs."""
    out = llm(prompt, max_tokens=48, temperature=0.0, logprobs=2)
    assert isinstance(out, dict)
    lp = out["choices"][0]["logprobs"]
    steps = []
    for token, top in zip(lp["tokens"], lp["top_logprobs"]):
        (first, a), (second, b) = sorted(top.items(), key=lambda kv: -kv[1])[:2]
        steps.append((token, second if first == token else first, a - b))
    return steps


@pytest.mark.real_model
def test_sampling_grammar_stream_and_logprobs_are_unchanged(smollm2_path: Path) -> None:
    """The sampler draws once per produced token either way: seeded sampling, a grammar, streaming with
    a stop string and logprobs give what they give without a draft."""
    plain = Llama(str(smollm2_path), n_ctx=512, verbose=False)
    spec = Llama(str(smollm2_path), n_ctx=512, verbose=False, draft_model=LlamaPromptLookupDecoding())
    for kwargs in ({"temperature": 0.7, "seed": 3}, {"stop": ["1889"]}):
        assert _text(spec, **kwargs) == _text(plain, **kwargs)
    # a grammar the copy fits (no forced detour through near-ties, where batched rounding decides)
    grammar = LlamaGrammar.from_string('root ::= " a wrought-iron" [A-Za-z0-9 ,.()\n-]+')
    assert _text(spec, grammar=grammar) == _text(plain, grammar=grammar)
    chunks: Any = spec(COPY, max_tokens=48, temperature=0.0, stream=True, stop=["Paris"])
    assert "".join(c["choices"][0]["text"] for c in chunks) == _text(plain, stop=["Paris"])
    lp_plain = plain(COPY, max_tokens=8, temperature=0.0, logprobs=2)["choices"][0]["logprobs"]  # type: ignore[index]
    lp_spec = spec(COPY, max_tokens=8, temperature=0.0, logprobs=2)["choices"][0]["logprobs"]  # type: ignore[index]
    assert lp_spec["tokens"] == lp_plain["tokens"]
    np.testing.assert_allclose(lp_spec["token_logprobs"], lp_plain["token_logprobs"], atol=0.1)


@pytest.mark.real_model
def test_each_token_is_the_greedy_choice_of_the_logits_it_was_verified_with(smollm2_path: Path) -> None:
    """Independent of rounding: with logits_all the scores of a speculative run are those of its batched
    verifying decodes, and every generated token is their argmax."""
    spec = Llama(str(smollm2_path), n_ctx=512, logits_all=True, verbose=False,
                 draft_model=LlamaPromptLookupDecoding())
    _text(spec, max_tokens=32)
    n_prompt = len(spec.tokenize(COPY.encode()))
    generated = spec.input_ids[n_prompt : spec.n_tokens]
    assert len(generated) == 31  # the last token is sampled, not evaluated
    assert spec.scores[n_prompt - 1 : spec.n_tokens - 1].argmax(axis=1).tolist() == generated.tolist()


@pytest.mark.real_model
def test_generate_with_a_draft_model(smollm2_path: Path) -> None:
    import itertools

    plain = Llama(str(smollm2_path), n_ctx=512, verbose=False)
    spec = Llama(str(smollm2_path), n_ctx=512, verbose=False, draft_model=LlamaPromptLookupDecoding())
    tokens = plain.tokenize(COPY.encode())
    want = list(itertools.islice(plain.generate(tokens, temp=0.0), 20))
    assert list(itertools.islice(spec.generate(tokens, temp=0.0), 20)) == want


# -- drop-in names and renderings ----------------------------------------------------------------------


def test_llama_types_names_are_at_the_top_level() -> None:
    from llama_rewire import ChatCompletionRequestUserMessage, CreateChatCompletionResponse

    assert ChatCompletionRequestUserMessage is llama_types.ChatCompletionRequestUserMessage
    assert CreateChatCompletionResponse is llama_types.CreateChatCompletionResponse
    public = {n for n in vars(llama_types) if n[:1].isupper() and not n.startswith("_")}
    public -= {"Any", "Literal", "Optional", "TypedDict", "Union"}
    assert public <= set(llama_rewire.__all__)
    assert llama_rewire.LlamaDraftModel is llama_rewire.llama_speculative.LlamaDraftModel


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% endif %}{% endfor %}"
)


def test_mistral_instruct_renders_as_the_models_template() -> None:
    import jinja2

    messages: list[Any] = [{"role": "user", "content": "Instruction"},
                           {"role": "assistant", "content": "Model answer"},
                           {"role": "user", "content": "Follow-up instruction"}]
    reference = jinja2.Template(MISTRAL_TEMPLATE).render(messages=messages, bos_token="<s>", eos_token="</s>")
    assert "<s>" + format_mistral_instruct(messages=messages).prompt == reference
    assert "[/INST]Model answer</s>" in reference


def test_tokenizer_config_formatter_opens_the_answer_as_llama_cpp_python() -> None:
    user: list[Any] = [{"role": "user", "content": "Hello, world!"}]
    mistral = hf_tokenizer_config_to_chat_formatter(
        {"chat_template": MISTRAL_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"})
    response = mistral(messages=user)
    # the template cannot open the assistant turn: an empty assistant message does (llama-cpp-python's way)
    assert response.prompt == "<s>[INST] Hello, world! [/INST]</s>"
    assert response.stop == ["</s>", "<s>"]
    assert response.added_special
    assert hf_tokenizer_config_to_chat_formatter(
        {"chat_template": MISTRAL_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"},
        add_generation_prompt=False)(messages=user).prompt == "<s>[INST] Hello, world! [/INST]"
    # a template that reads add_generation_prompt opens the turn itself, once
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    formatter = hf_tokenizer_config_to_chat_formatter(
        {"chat_template": chatml, "bos_token": "", "eos_token": "<|im_end|>"})
    assert formatter(messages=user).prompt == (
        "<|im_start|>user\nHello, world!<|im_end|>\n<|im_start|>assistant\n")
