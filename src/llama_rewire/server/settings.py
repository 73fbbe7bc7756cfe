"""Server settings: the server's own, one set per served model, config files and the command line.

The command line has one flag per settings field (``--n_ctx`` and ``--n-ctx`` alike), as in
llama-cpp-python's server, plus ``--act`` for ``--activations``, ``--wiring``, and ``--config_file`` for a
JSON or TOML file holding the server settings and a ``models`` list. Values given on the command line are
validated by the same pydantic models as config files, so both report errors the same way.
"""

# No ``from __future__ import annotations``: pydantic evaluates these annotations at runtime, and
# ``X | None`` does not evaluate on Python 3.9.

import argparse
import json
import sys
from pathlib import Path, PurePath
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..llama import LLAMA_DEFAULT_SEED
from ..models import DEFAULT_MODEL

DEFAULT_MAX_BODY_BYTES = 16 << 20
# llama-cpp-python's command-line spellings of a boolean's value (--embedding true, --verbose off)
TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})


class ModelSettings(BaseModel):
    """How to load one served model; ``model_alias`` is the name requests select it by."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Optional[str] = Field(
        None, description=f"a GGUF file, or a known model name such as smollm2 (default: {DEFAULT_MODEL})")
    model_alias: Optional[str] = Field(
        None, description="the name requests select this model by (default: the model file's name, without "
                          "its directory)")
    activations: Optional[Union[str, dict[str, Any]]] = Field(
        None, description="FFN activation spec, e.g. '*:relu' or '0-11:gelu' (default: the model's own)")
    wiring: Optional[Union[str, dict[str, Any]]] = Field(
        None, description="wiring spec or profile, e.g. '*:gelu, 20:skip=ffn, 5:heads_off=[0,3]' (default: "
                          "the model as stored; activations, if given too, replace its activations)")
    n_ctx: int = Field(2048, ge=0, description="context window in tokens (0: the model's training context)")
    n_batch: int = Field(512, ge=1, description="prompt tokens evaluated per batch")
    n_parallel: int = Field(
        1, ge=1, le=256, description="slots: requests decoded together, each with a window of n_ctx tokens "
                                     "(continuous batching; 1: one request at a time)")
    n_gpu_layers: int = Field(0, description="layers to offload to the GPU or the RPC servers (-1: all)")
    rpc_servers: Optional[str] = Field(
        None, description="llama.cpp RPC servers 'host:port,host:port' (llama-rewire rpc-server) that take "
                          "the offloaded layers")
    n_threads: Optional[int] = Field(None, ge=1, description="CPU threads (default: half the cores)")
    seed: int = Field(LLAMA_DEFAULT_SEED, description="default sampling seed (requests may set their own)")
    chat_format: Optional[str] = Field(None, description="chat format (default: the model's chat template)")
    embedding: bool = Field(False, description="load for /v1/embeddings")
    pooling_type: int = Field(-1, description="embedding pooling: -1 the model's, 0 none (a vector per "
                                              "token), 1 mean, 2 cls, 3 last")
    flash_attn: bool = Field(False, description="use flash attention")
    use_extra_bufts: bool = Field(True, description="repack weights for the CPU's fastest kernels (AMX, "
                                                    "CPU_REPACK) at load time; --no-repack keeps them as "
                                                    "stored")
    logits_all: bool = Field(False, description="keep every position's logits (for echo with logprobs)")
    verbose: bool = Field(False, description="print llama.cpp's log")

    @property
    def alias(self) -> str:
        """``model_alias``, else the model's file name: responses and /health never show a server path."""
        return self.model_alias or PurePath(self.model or DEFAULT_MODEL).name

    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Llama(path, **kwargs)``."""
        return self.model_dump(exclude={"model", "model_alias"})


class ServerSettings(BaseModel):
    """Where and how the HTTP server listens."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("localhost", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    api_key: Optional[str] = Field(
        None, description="require 'Authorization: Bearer API_KEY' on every endpoint (/health without it "
                          "says only whether the server is up)")
    ssl_keyfile: Optional[str] = Field(None, description="TLS private key file")
    ssl_certfile: Optional[str] = Field(None, description="TLS certificate file")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, description="the largest request body accepted, in bytes; a larger "
                                                     "one is answered 413 before it is read")
    cors_origins: Optional[str] = Field(
        None, description="web pages (origins, comma-separated, or '*' for any) whose scripts may call the "
                          "server (default: any with an api_key, else only pages on localhost)")
    allowed_hosts: Optional[str] = Field(
        None, description="host names accepted in requests' Host header besides localhost and loopback "
                          "addresses, when the server listens on a loopback address (comma-separated; '*': "
                          "any); guards a key-less local server against DNS rebinding")
    steering_dir: Optional[str] = Field(
        None, description="a directory of control-vector GGUF files (llama-rewire steer build, llama.cpp, "
                          "repeng) that completion and chat requests may name in their 'steer' field")

    @field_validator("api_key")
    @classmethod
    def _api_key_not_empty(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.strip():
            raise ValueError("the API key is empty (an unset variable?): give a key, or leave out --api_key "
                             "to serve without one")
        return value

    @field_validator("steering_dir")
    @classmethod
    def _steering_dir_exists(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"the steering directory {value!r} is not a directory")
        return value


class Settings(ServerSettings):
    """Everything ``create_app`` needs: the server settings and the models to serve (the config file's
    shape)."""

    models: list[ModelSettings] = Field(min_length=1, description="the models to serve")

    @model_validator(mode="after")
    def _aliases_are_unique(self) -> "Settings":
        seen: set[str] = set()
        for m in self.models:
            if m.alias in seen:
                raise ValueError(f"two models have the alias {m.alias!r}: give each a distinct model_alias")
            seen.add(m.alias)
        return self


def load_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """A config file's contents: TOML if its name ends in .toml, JSON otherwise."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python < 3.11
            import tomli as tomllib
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: invalid TOML: {e}") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a table of settings, got {type(data).__name__}")
    return data


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: 'models.0.n_ctx: Input should be ...'."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
    return "; ".join(lines)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _add_fields(group: Any, model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        if name == "models":
            continue
        flags = [f"--{name}"]
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        if name == "activations":
            flags.append("--act")
        if name == "n_parallel":
            flags.append("-np")  # llama-server's name
        help_text = field.description or ""
        if _is_bool(field.annotation):
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            if name == "use_extra_bufts":
                group.add_argument("--no-repack", dest=name, action="store_false", default=argparse.SUPPRESS,
                                   help="the same as --no-use_extra_bufts")
        else:
            if field.default is not None and "default" not in help_text:
                help_text += f" (default: {field.default})"
            group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                               help=help_text)


def build_parser(prog: str = "python -m llama_rewire.server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="An OpenAI-compatible HTTP server for llama-rewire models.")
    _add_fields(parser.add_argument_group("server"), ServerSettings)
    _add_fields(parser.add_argument_group("model (one model; several go in a --config_file)"), ModelSettings)
    parser.add_argument("model_positional", nargs="?", default=None, metavar="MODEL",
                        help="the model, as --model takes it")
    parser.add_argument("--config_file", "--config-file", default=None, metavar="FILE",
                        help="a JSON or TOML file with server settings and a 'models' list of model settings;"
                             " server flags given here override the file's")
    return parser


def _word(arg: str) -> str:
    return arg.strip().lower()


def _boolean_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with llama-cpp-python's boolean forms, ``--flag true`` / ``--flag=off``, rewritten as
    ``--flag`` / ``--no-flag``; a ``--flag=value`` that is not a boolean is a usage error."""
    negative = {}
    for model in (ServerSettings, ModelSettings):
        for name, field in model.model_fields.items():
            if _is_bool(field.annotation):
                for flag in (f"--{name}", f"--{name.replace('_', '-')}"):
                    negative[flag] = "--no-" + flag[2:]
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if arg == "--":
            out += argv[i:]
            break
        if flag in negative and eq:
            word = _word(value)
            if word not in TRUE_WORDS | FALSE_WORDS:
                parser.error(f"{flag}: expected a boolean (true/false, 1/0, yes/no, on/off), got {value!r}")
            out.append(flag if word in TRUE_WORDS else negative[flag])
        elif arg in negative and i + 1 < len(argv) and _word(argv[i + 1]) in TRUE_WORDS | FALSE_WORDS:
            out.append(arg if _word(argv[i + 1]) in TRUE_WORDS else negative[arg])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def parse_settings(argv: Optional[list[str]] = None,
                   prog: str = "python -m llama_rewire.server") -> Settings:
    """Settings from the command line; a bad value exits with a usage error, as argparse does. Boolean
    flags take llama-cpp-python's ``--flag true`` / ``--flag false`` as well as ``--flag`` / ``--no-flag``."""
    parser = build_parser(prog)
    args = sys.argv[1:] if argv is None else list(argv)
    given = vars(parser.parse_args(_boolean_values(parser, args)))
    config_file = given.pop("config_file")
    positional = given.pop("model_positional")
    if positional is not None:
        if given.get("model", positional) != positional:
            parser.error(f"two models given: {positional!r} and --model {given['model']!r}")
        given["model"] = positional
    server = {k: v for k, v in given.items() if k in ServerSettings.model_fields}
    model = {k: v for k, v in given.items() if k in ModelSettings.model_fields}
    try:
        if config_file is not None:
            if model:
                flags = ", ".join(f"--{k}" for k in model)
                parser.error(f"{flags}: with --config_file, model settings go in the file's 'models' list")
            data = load_config_file(config_file)
            return Settings.model_validate({**data, **server})
        return Settings.model_validate({**server, "models": [model]})
    except ValidationError as e:
        parser.error(format_validation_error(e))
    except (ValueError, OSError) as e:
        parser.error(str(e))
