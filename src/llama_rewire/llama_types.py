"""Typed shapes of the OpenAI-style dicts that ``Llama`` takes and returns.

The names are llama-cpp-python's (``llama_cpp.llama_types``), so annotations written against it keep
working. These are ``TypedDict`` s: plain dicts at run time. Python 3.9 has no ``NotRequired``, so a
type with optional keys is split in two: a private base with the required keys and the public class,
``total=False``, adding the optional ones.

This module deliberately avoids ``from __future__ import annotations``: some tools (pydantic, FastAPI)
evaluate TypedDict annotations at run time, so they are spelled with ``Optional``/``Union``, which 3.9
can evaluate.
"""

from typing import Any, Literal, Optional, TypedDict, Union

JsonType = Union[None, int, str, bool, list[Any], dict[str, Any]]

# -- embeddings ----------------------------------------------------------------------------------


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class Embedding(TypedDict):
    index: int
    object: str
    embedding: Union[list[float], list[list[float]]]


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


# -- text completions ----------------------------------------------------------------------------


class CompletionLogprobs(TypedDict):
    text_offset: list[int]
    token_logprobs: list[Optional[float]]
    tokens: list[str]
    top_logprobs: list[Optional[dict[str, float]]]


class CompletionChoice(TypedDict):
    text: str
    index: int
    logprobs: Optional[CompletionLogprobs]
    finish_reason: Optional[Literal["stop", "length"]]


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _CreateCompletionResponseBase(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]


class CreateCompletionResponse(_CreateCompletionResponseBase, total=False):
    usage: CompletionUsage  # absent from streamed chunks


# -- chat: request messages ----------------------------------------------------------------------


class ChatCompletionRequestMessageContentPartText(TypedDict):
    type: Literal["text"]
    text: str


class _ChatCompletionRequestMessageContentPartImageImageUrlBase(TypedDict):
    url: str


class ChatCompletionRequestMessageContentPartImageImageUrl(
    _ChatCompletionRequestMessageContentPartImageImageUrlBase, total=False
):
    detail: Literal["auto", "low", "high"]


class ChatCompletionRequestMessageContentPartImage(TypedDict):
    type: Literal["image_url"]
    image_url: Union[str, ChatCompletionRequestMessageContentPartImageImageUrl]


ChatCompletionRequestMessageContentPart = Union[
    ChatCompletionRequestMessageContentPartText,
    ChatCompletionRequestMessageContentPartImage,
]


class ChatCompletionRequestSystemMessage(TypedDict):
    role: Literal["system"]
    content: Optional[str]


class ChatCompletionRequestUserMessage(TypedDict):
    role: Literal["user"]
    content: Optional[Union[str, list[ChatCompletionRequestMessageContentPart]]]


class ChatCompletionMessageToolCallFunction(TypedDict):
    name: str
    arguments: str  # JSON text


class ChatCompletionMessageToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: ChatCompletionMessageToolCallFunction


ChatCompletionMessageToolCalls = list[ChatCompletionMessageToolCall]


class ChatCompletionRequestAssistantMessageFunctionCall(TypedDict):
    name: str
    arguments: str


class _ChatCompletionRequestAssistantMessageBase(TypedDict):
    role: Literal["assistant"]


class ChatCompletionRequestAssistantMessage(_ChatCompletionRequestAssistantMessageBase, total=False):
    content: Optional[str]
    tool_calls: ChatCompletionMessageToolCalls
    function_call: ChatCompletionRequestAssistantMessageFunctionCall  # deprecated by OpenAI


class ChatCompletionRequestToolMessage(TypedDict):
    role: Literal["tool"]
    content: Optional[str]
    tool_call_id: str


class ChatCompletionRequestFunctionMessage(TypedDict):
    role: Literal["function"]
    content: Optional[str]
    name: str


ChatCompletionRequestMessage = Union[
    ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage,
    ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestToolMessage,
    ChatCompletionRequestFunctionMessage,
]


# -- chat: functions and tools -------------------------------------------------------------------

ChatCompletionFunctionParameters = dict[str, JsonType]


class _ChatCompletionFunctionBase(TypedDict):
    name: str
    parameters: ChatCompletionFunctionParameters


class ChatCompletionFunction(_ChatCompletionFunctionBase, total=False):
    description: str


class ChatCompletionFunctions(_ChatCompletionFunctionBase, total=False):
    description: str


class ChatCompletionFunctionCallOption(TypedDict):
    name: str


class ChatCompletionRequestFunctionCallOption(TypedDict):
    name: str


ChatCompletionRequestFunctionCall = Union[Literal["none", "auto"], ChatCompletionRequestFunctionCallOption]


class ChatCompletionToolFunction(_ChatCompletionFunctionBase, total=False):
    description: str


class ChatCompletionTool(TypedDict):
    type: Literal["function"]
    function: ChatCompletionToolFunction


class ChatCompletionNamedToolChoiceFunction(TypedDict):
    name: str


class ChatCompletionNamedToolChoice(TypedDict):
    type: Literal["function"]
    function: ChatCompletionNamedToolChoiceFunction


ChatCompletionToolChoiceOption = Union[Literal["none", "auto", "required"], ChatCompletionNamedToolChoice]


# -- chat: response format -----------------------------------------------------------------------


class _ChatCompletionRequestResponseFormatJsonSchemaBase(TypedDict):
    name: str


class ChatCompletionRequestResponseFormatJsonSchema(
    _ChatCompletionRequestResponseFormatJsonSchemaBase, total=False
):
    description: str
    schema: JsonType
    strict: Optional[bool]


class _ChatCompletionRequestResponseFormatBase(TypedDict):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequestResponseFormat(_ChatCompletionRequestResponseFormatBase, total=False):
    schema: JsonType  # with "json_object" (the llama-cpp-python / Anyscale extension)
    json_schema: ChatCompletionRequestResponseFormatJsonSchema  # with "json_schema" (OpenAI)


# -- chat: responses -----------------------------------------------------------------------------


class ChatCompletionResponseFunctionCall(TypedDict):
    name: str
    arguments: str


class _ChatCompletionResponseMessageBase(TypedDict):
    content: Optional[str]
    role: Literal["assistant", "function"]


class ChatCompletionResponseMessage(_ChatCompletionResponseMessageBase, total=False):
    tool_calls: ChatCompletionMessageToolCalls
    function_call: ChatCompletionResponseFunctionCall  # deprecated by OpenAI


class ChatCompletionTopLogprobToken(TypedDict):
    token: str
    logprob: float
    bytes: Optional[list[int]]


class ChatCompletionLogprobToken(ChatCompletionTopLogprobToken):
    top_logprobs: list[ChatCompletionTopLogprobToken]


class ChatCompletionLogprobs(TypedDict):
    content: Optional[list[ChatCompletionLogprobToken]]
    refusal: Optional[list[ChatCompletionLogprobToken]]


class ChatCompletionResponseChoice(TypedDict):
    index: int
    message: ChatCompletionResponseMessage
    logprobs: Optional[ChatCompletionLogprobs]
    finish_reason: Optional[str]


class CreateChatCompletionResponse(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: CompletionUsage


# -- chat: streamed responses --------------------------------------------------------------------


class ChatCompletionMessageToolCallChunkFunction(TypedDict):
    name: Optional[str]
    arguments: str


class _ChatCompletionMessageToolCallChunkBase(TypedDict):
    index: int
    type: Literal["function"]
    function: ChatCompletionMessageToolCallChunkFunction


class ChatCompletionMessageToolCallChunk(_ChatCompletionMessageToolCallChunkBase, total=False):
    id: str


class ChatCompletionStreamResponseDeltaEmpty(TypedDict):
    pass


class ChatCompletionStreamResponseDeltaFunctionCall(TypedDict):
    name: str
    arguments: str


class ChatCompletionStreamResponseDelta(TypedDict, total=False):
    content: Optional[str]
    function_call: Optional[ChatCompletionStreamResponseDeltaFunctionCall]  # deprecated by OpenAI
    tool_calls: Optional[list[ChatCompletionMessageToolCallChunk]]
    role: Optional[Literal["system", "user", "assistant", "tool"]]


class _ChatCompletionStreamResponseChoiceBase(TypedDict):
    index: int
    delta: Union[ChatCompletionStreamResponseDelta, ChatCompletionStreamResponseDeltaEmpty]
    finish_reason: Optional[Literal["stop", "length", "tool_calls", "function_call"]]


class ChatCompletionStreamResponseChoice(_ChatCompletionStreamResponseChoiceBase, total=False):
    logprobs: Optional[ChatCompletionLogprobs]


class CreateChatCompletionStreamResponse(TypedDict):
    id: str
    model: str
    object: Literal["chat.completion.chunk"]
    created: int
    choices: list[ChatCompletionStreamResponseChoice]


# -- older names, kept because llama-cpp-python still exports them -------------------------------

EmbeddingData = Embedding
CompletionChunk = CreateCompletionResponse
Completion = CreateCompletionResponse
CreateCompletionStreamResponse = CreateCompletionResponse
ChatCompletionMessage = ChatCompletionResponseMessage
ChatCompletionChoice = ChatCompletionResponseChoice
ChatCompletion = CreateChatCompletionResponse
ChatCompletionChunkDeltaEmpty = ChatCompletionStreamResponseDeltaEmpty
ChatCompletionChunkChoice = ChatCompletionStreamResponseChoice
ChatCompletionChunkDelta = ChatCompletionStreamResponseDelta
ChatCompletionChunk = CreateChatCompletionStreamResponse
ChatCompletionStreamResponse = CreateChatCompletionStreamResponse
ChatCompletionResponseFunction = ChatCompletionFunction
ChatCompletionFunctionCall = ChatCompletionResponseFunctionCall
