"""Request bodies, shaped like OpenAI's API (and llama-cpp-python's server extras).

Only the fields a client sets are passed on to the model, with llama-cpp-python's server's defaults for
the sampling fields it leaves out (:data:`SAMPLING_DEFAULTS`: the same for completions and chats, where
``Llama``'s own differ), ``Llama``'s for the rest. Unknown fields are ignored, as OpenAI-compatible
servers do.
"""

# No ``from __future__ import annotations``: pydantic evaluates these annotations at runtime, and
# ``X | None`` does not evaluate on Python 3.9.

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# fields the server handles itself; everything else a client sets is passed to the Llama call
SERVER_FIELDS = frozenset({"model", "stream", "stream_options", "n", "best_of", "user", "logit_bias",
                           "logit_bias_type", "max_completion_tokens", "parallel_tool_calls", "steer"})

# an explicit null for these means "no limit" / "the default", so it is passed on
NULLABLE_FIELDS = frozenset({"max_tokens"})

# llama-cpp-python's server samples with these when a completion or chat request leaves them out
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8, "top_p": 0.95, "min_p": 0.05, "top_k": 40, "repeat_penalty": 1.1,
    "presence_penalty": 0.0, "frequency_penalty": 0.0,
    "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
}
FLOAT32_MAX = 3.4028234663852886e38


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: Optional[str] = Field(None, description="the alias of a served model (default: the first)")

    def call_kwargs(self) -> dict[str, Any]:
        """The fields the client set that go to the Llama call."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items()
                if k not in SERVER_FIELDS and (v is not None or k in NULLABLE_FIELDS)}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SteerRequest(BaseModel):
    """A request's steering (llama-rewire's extension; OpenAI clients send it in ``extra_body``): the
    control vector ``vector`` from the server's steering directory, added ``alpha`` times to the residual
    stream after each of its layers (or of ``layers``), at the positions ``tokens`` selects."""

    model_config = ConfigDict(extra="forbid")

    vector: str = Field(description="a control-vector GGUF file in the server's --steering-dir")
    alpha: float = Field(1.0, allow_inf_nan=False, description="the strength: alpha * vector (a float32)")
    layers: Optional[list[int]] = Field(None, description="steer only these of the vector's layers")
    tokens: Literal["all", "prompt", "generated"] = Field("all", description="the positions steered")

    @field_validator("alpha")
    @classmethod
    def _alpha_is_a_float32(cls, value: float) -> float:
        if abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value:g} is beyond the float32 range (|alpha| <= {FLOAT32_MAX:.4g})")
        return value


class SamplingRequest(_Request):
    """What completions and chat completions share."""

    max_tokens: Optional[int] = Field(
        None, ge=0, description="tokens to generate (0 or null: up to the end of the context)")
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    tfs_z: Optional[float] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repeat_penalty: Optional[float] = None
    mirostat_mode: Optional[int] = None
    mirostat_tau: Optional[float] = None
    mirostat_eta: Optional[float] = None
    grammar: Optional[str] = None
    logit_bias: Optional[dict[str, float]] = None
    logit_bias_type: Optional[Literal["input_ids", "tokens"]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(None, description="only 1 is supported")
    user: Optional[str] = None
    steer: Optional[SteerRequest] = Field(None, description="steering for this request only")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def call_kwargs(self) -> dict[str, Any]:
        return {**SAMPLING_DEFAULTS, **super().call_kwargs()}


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[int], list[str]] = ""
    suffix: Optional[str] = None
    echo: Optional[bool] = None
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    best_of: Optional[int] = Field(None, description="only 1 is supported")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None
    function_call: Optional[dict[str, Any]] = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[dict[str, Any]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=0, description="the newer name of max_tokens")

    def call_kwargs(self) -> dict[str, Any]:
        kwargs = super().call_kwargs()
        kwargs["messages"] = [m.model_dump(exclude_unset=True) for m in self.messages]
        if "max_tokens" not in kwargs and "max_completion_tokens" in self.model_fields_set:
            kwargs["max_tokens"] = self.max_completion_tokens
        return kwargs


class EmbeddingRequest(_Request):
    input: Union[str, list[str]]
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[int] = Field(None, description="not supported")
    user: Optional[str] = None


class TokenizeRequest(_Request):
    input: str


class DetokenizeRequest(_Request):
    tokens: list[int]
