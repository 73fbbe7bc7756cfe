"""llama-cpp-python's multimodal chat handlers (LLaVA, MiniCPM-V, Qwen2.5-VL, mtmd, ...): not available.

llama-rewire runs text models only; it has no image encoder (CLIP / mtmd). The handler classes exist so
that code importing them keeps importing, and making one raises ``NotImplementedError`` (a
``RuntimeError``) that says so, before any model file is read.
"""

from __future__ import annotations

from typing import Any


class MTMDChatHandler:
    """Not available: a chat handler for models with an image (or audio) encoder."""

    DEFAULT_SYSTEM_MESSAGE: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__}: llama-rewire runs text models only and has no image or audio encoder "
            "(clip / mtmd); use llama-cpp-python for multimodal chat"
        )


class Llava15ChatHandler(MTMDChatHandler):
    """Not available: LLaVA 1.5."""


class ObsidianChatHandler(Llava15ChatHandler):
    """Not available: Obsidian."""


class MoondreamChatHandler(Llava15ChatHandler):
    """Not available: Moondream."""


class Llava16ChatHandler(Llava15ChatHandler):
    """Not available: LLaVA 1.6."""


class NanoLlavaChatHandler(Llava15ChatHandler):
    """Not available: nanoLLaVA."""


class Llama3VisionAlphaChatHandler(Llava15ChatHandler):
    """Not available: Llama 3 Vision Alpha."""


Llama3VisionAlpha = Llama3VisionAlphaChatHandler


class MiniCPMv26ChatHandler(Llava15ChatHandler):
    """Not available: MiniCPM-V 2.6."""


class Qwen25VLChatHandler(Llava15ChatHandler):
    """Not available: Qwen2.5-VL."""


class Gemma4ChatHandler(MTMDChatHandler):
    """Not available: Gemma 4 with images."""


__all__ = ["Gemma4ChatHandler", "Llama3VisionAlpha", "Llama3VisionAlphaChatHandler", "Llava15ChatHandler",
           "Llava16ChatHandler", "MTMDChatHandler", "MiniCPMv26ChatHandler", "MoondreamChatHandler",
           "NanoLlavaChatHandler", "ObsidianChatHandler", "Qwen25VLChatHandler"]
