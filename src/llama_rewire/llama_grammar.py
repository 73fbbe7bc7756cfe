"""GBNF grammars for constrained sampling, shaped like llama-cpp-python's ``llama_cpp.llama_grammar``.

A grammar is parsed (and checked) when it is made; it is compiled against a model's vocabulary when a
completion uses it. JSON schemas are converted by llama.cpp's own converter.
"""

from __future__ import annotations

import json
from typing import Any

from . import _core
from .errors import GrammarError

# A JSON object (what response_format json_object asks for), with any JSON values inside.
JSON_GBNF = r"""
root   ::= ws object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= [ \t\n]{0,20}
"""

LLAMA_GRAMMAR_DEFAULT_ROOT = "root"


class LlamaGrammar:
    """A GBNF grammar whose start rule is ``root``."""

    def __init__(self, *, _grammar: str) -> None:
        self._grammar = _grammar
        self._root = LLAMA_GRAMMAR_DEFAULT_ROOT

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> LlamaGrammar:
        """Parse GBNF text; raises ``GrammarError`` (a ValueError) when it does not parse."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise GrammarError("a grammar must be non-empty GBNF text")
        # token references (<[123]>) need a vocabulary: those grammars are checked when used
        if "<[" not in grammar and not _core.grammar_check(None, grammar):
            raise GrammarError("the grammar does not parse or has no 'root' rule")
        return cls(_grammar=grammar)

    @classmethod
    def from_file(cls, file: str, verbose: bool = True) -> LlamaGrammar:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise GrammarError(f"cannot read the grammar file {file}: {e}") from None
        return cls.from_string(text, verbose=verbose)

    @classmethod
    def from_json_schema(cls, json_schema: str | dict[str, Any], verbose: bool = True) -> LlamaGrammar:
        """A grammar for the JSON documents that a JSON schema (text or dict) accepts."""
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        return cls.from_string(json_schema_to_gbnf(text), verbose=verbose)

    @property
    def grammar(self) -> str:
        return self._grammar

    def __repr__(self) -> str:
        return f"LlamaGrammar({self._grammar[:60]!r}...)"


def json_schema_to_gbnf(schema: str, prop_order: list[str] | None = None) -> str:
    """GBNF text for a JSON schema given as JSON text."""
    try:
        parsed = json.loads(schema)
    except json.JSONDecodeError as e:
        raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(parsed, (dict, bool)):
        raise GrammarError("a JSON schema must be an object (or true/false)")
    return str(_core.json_schema_to_grammar(schema))


__all__ = ["JSON_GBNF", "LLAMA_GRAMMAR_DEFAULT_ROOT", "LlamaGrammar", "json_schema_to_gbnf"]
