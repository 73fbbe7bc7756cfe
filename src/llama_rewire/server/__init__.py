"""An OpenAI-compatible HTTP server for llama-rewire models, shaped like llama-cpp-python's.

    python -m llama_rewire.server --model smollm2 --act "*:relu"
    llama-rewire serve --config_file models.toml

Several models, each with its own activations, can be served side by side under their aliases (see
:class:`ModelSettings`); ``create_app(settings)`` builds the application for any ASGI server.
"""

from .app import create_app
from .main import main, serve
from .settings import ModelSettings, ServerSettings, Settings, parse_settings

__all__ = ["ModelSettings", "ServerSettings", "Settings", "create_app", "main", "parse_settings", "serve"]
