"""GBNF grammars for constrained sampling, shaped like llama-cpp-python's ``llama_cpp.llama_grammar``.

A grammar is parsed (and checked) when it is made; it is compiled against a model's vocabulary when a
completion uses it. JSON schemas are converted by llama.cpp's own converter. Every grammar, however it
is made, is first held to the limits of :mod:`._grammar_limits` (nesting, size, rules, repetitions),
and every JSON schema to its depth and "$ref" limits before it is converted. A JSON schema's grammar
accepts the documents llama-cpp-python's accepts (one optional space between tokens, none of llama.cpp's
newlines and indentation), so constrained greedy output is the same.
"""

from __future__ import annotations

import json
from typing import Any

from . import _core
from ._grammar_compat import convert_json_schema
from ._grammar_limits import check_grammar, check_json_schema, load_json_schema
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
        if not isinstance(_grammar, str):
            raise GrammarError("a grammar must be GBNF text")
        check_grammar(_grammar)
        self._grammar = _grammar
        self._root = LLAMA_GRAMMAR_DEFAULT_ROOT

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> LlamaGrammar:
        """Parse GBNF text; raises ``GrammarError`` (a ValueError) when it does not parse."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise GrammarError("a grammar must be non-empty GBNF text")
        # the limits first (in the constructor): llama.cpp's parser never sees a grammar beyond them
        made = cls(_grammar=grammar)
        # token references (<[123]>) need a vocabulary: those grammars are checked when used
        if "<[" not in grammar:
            _core.grammar_check(None, grammar)  # GrammarError saying why it does not parse
        return made

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
        if not isinstance(json_schema, str):
            check_json_schema(json_schema)  # before json.dumps, which recurses
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        return cls.from_string(json_schema_to_gbnf(text), verbose=verbose)

    @property
    def grammar(self) -> str:
        return self._grammar

    def __repr__(self) -> str:
        return f"LlamaGrammar({self._grammar[:60]!r}...)"


def json_schema_to_gbnf(schema: str, prop_order: list[str] | None = None) -> str:
    """GBNF text for a JSON schema given as JSON text."""
    parsed = load_json_schema(schema)
    if not isinstance(parsed, (dict, bool)):
        raise GrammarError("a JSON schema must be an object (or true/false)")
    return convert_json_schema(schema)


__all__ = ["JSON_GBNF", "LLAMA_GRAMMAR_DEFAULT_ROOT", "LlamaGrammar", "json_schema_to_gbnf"]

# llama-cpp-python's other names in this module: SchemaConverter, its rule tables, sample grammars
from ._grammar_compat import (  # noqa: E402
    ARITHMETIC_GBNF,
    C_GBNF,
    CHESS_GBNF,
    DOT,
    DOTALL,
    ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS,
    GRAMMAR_LITERAL_ESCAPE_RE,
    GRAMMAR_LITERAL_ESCAPES,
    INVALID_RULE_CHARS_RE,
    JAPANESE_GBNF,
    JSON_ARR_GBNF,
    LIST_GBNF,
    NON_LITERAL_SET,
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    SPACE_RULE,
    STRING_FORMAT_RULES,
    BuiltinRule,
    SchemaConverter,
)

__all__ += [
    "ARITHMETIC_GBNF", "CHESS_GBNF", "C_GBNF", "DOT", "DOTALL", "ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS",
    "GRAMMAR_LITERAL_ESCAPES", "GRAMMAR_LITERAL_ESCAPE_RE", "INVALID_RULE_CHARS_RE", "JAPANESE_GBNF",
    "JSON_ARR_GBNF", "LIST_GBNF", "NON_LITERAL_SET", "PRIMITIVE_RULES", "RESERVED_NAMES", "SPACE_RULE",
    "STRING_FORMAT_RULES", "BuiltinRule", "SchemaConverter",
]
