"""The rest of llama-cpp-python's ``llama_cpp.llama_grammar``: ``SchemaConverter``, its rule tables, and
sample grammars.

llama-cpp-python converts JSON schemas with a Python converter; llama-rewire uses llama.cpp's own
(``json_schema_to_gbnf``), and :class:`SchemaConverter` is that converter behind the Python one's
interface (``resolve_refs``, ``visit``, ``format_grammar``). The tables (``PRIMITIVE_RULES``, ...) give the
GBNF of the JSON primitives for code that builds grammars from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from . import _core
from ._grammar_limits import check_json_schema
from .errors import GrammarError


class BuiltinRule:
    """A GBNF rule body and the names of the rules it uses."""

    def __init__(self, content: str, deps: list[str] | None = None) -> None:
        self.content = content
        self.deps = list(deps or [])

    def __repr__(self) -> str:
        return f"BuiltinRule({self.content!r}, {self.deps!r})"


SPACE_RULE = '" "?'
DOTALL = "[\\U00000000-\\U0010FFFF]"  # any character
DOT = "[^\\x0A\\x0D]"  # any character but a line break

PRIMITIVE_RULES: dict[str, BuiltinRule] = {
    "boolean": BuiltinRule('("true" | "false") space'),
    "decimal-part": BuiltinRule("[0-9]{1,16}"),
    "integral-part": BuiltinRule("[0] | [1-9] [0-9]{0,15}"),
    "number": BuiltinRule('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
                          ["integral-part", "decimal-part"]),
    "integer": BuiltinRule('("-"? integral-part) space', ["integral-part"]),
    "value": BuiltinRule("object | array | string | number | boolean | null",
                         ["object", "array", "string", "number", "boolean", "null"]),
    "object": BuiltinRule(
        '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
        ["string", "value"],
    ),
    "array": BuiltinRule('"[" space ( value ("," space value)* )? "]" space', ["value"]),
    "uuid": BuiltinRule('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} '
                        '"-" [0-9a-fA-F]{12} "\\"" space'),
    "char": BuiltinRule('[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})'),
    "string": BuiltinRule('"\\"" char* "\\"" space', ["char"]),
    "null": BuiltinRule('"null" space'),
}

STRING_FORMAT_RULES: dict[str, BuiltinRule] = {
    "date": BuiltinRule('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )'),
    "time": BuiltinRule('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
                        '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )'),
    "date-time": BuiltinRule('date "T" time', ["date", "time"]),
    "date-string": BuiltinRule('"\\"" date "\\"" space', ["date"]),
    "time-string": BuiltinRule('"\\"" time "\\"" space', ["time"]),
    "date-time-string": BuiltinRule('"\\"" date-time "\\"" space', ["date-time"]),
}

RESERVED_NAMES = {"root", "dot", *PRIMITIVE_RULES, *STRING_FORMAT_RULES}

INVALID_RULE_CHARS_RE = re.compile(r"[^a-zA-Z0-9-]+")  # what a rule name cannot hold
GRAMMAR_LITERAL_ESCAPE_RE = re.compile(r'[\r\n"]')  # what a GBNF string literal must escape
GRAMMAR_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"'}
NON_LITERAL_SET = set("|.()[]{}*+?")  # regex characters that are not literal text
ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS = set("[]()|{}*+?")

# -- sample grammars (as in llama.cpp's grammars/ folder: written here, one per kind of output) ---------

ARITHMETIC_GBNF = r"""
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
"""

C_GBNF = r"""
root        ::= (declaration)*
declaration ::= type ws ident "(" ws params? ")" ws "{" ws statement* "}" ws
type        ::= ("int" | "float" | "char" | "void")
params      ::= type ws ident ws ("," ws type ws ident ws)*
statement   ::= (type ws ident ws "=" ws expr ";" | ident ws "=" ws expr ";" | "return" ws expr ";"
                | "while" ws "(" ws cond ")" ws "{" ws statement* "}" | expr ";") ws
cond        ::= expr ws ("<" | ">" | "==" | "!=" | "<=" | ">=") ws expr
expr        ::= term (ws [-+*/] ws term)*
term        ::= ident | [0-9]+ | "(" ws expr ")" | ident "(" ws (expr ("," ws expr)*)? ")"
ident       ::= [a-zA-Z_] [a-zA-Z0-9_]*
ws          ::= [ \t\n]*
"""

CHESS_GBNF = r"""
root   ::= "1. " move " " move "\n" ([1-9] [0-9]? ". " move " " move "\n")+
move   ::= (pawn | piece | castle) [+#]?
pawn   ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBRQ])?
piece  ::= [NBRQK] [a-h]? [1-8]? "x"? [a-h] [1-8]
castle ::= "O-O" "-O"?
"""

JAPANESE_GBNF = r"""
root  ::= jp-char+ ([ \t\n] jp-char+)*
jp-char ::= hiragana | katakana | punct | cjk
hiragana ::= [ぁ-ゟ]
katakana ::= [ァ-ヿ]
punct ::= [、-〾]
cjk ::= [一-鿿]
"""

JSON_ARR_GBNF = r"""
root   ::= arr
value  ::= object | array | string | number | ("true" | "false" | "null") ws
arr    ::= "[\n" ws ( value ( ",\n" ws value )* )? "]"
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array  ::= "[" ws ( value ( "," ws value )* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [1-9] [0-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""

LIST_GBNF = r"""
root ::= item+
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
"""

_RULE_LINE = re.compile(r"^([a-zA-Z0-9-]+)\s*::=\s*(.*)$")


def _ordered(schema: Any, prop_order: Mapping[str, int]) -> Any:
    """The schema with every ``properties`` object's keys in ``prop_order`` first (then as written)."""
    if isinstance(schema, list):
        return [_ordered(s, prop_order) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _ordered(v, prop_order) for k, v in schema.items()}
    props = out.get("properties")
    if isinstance(props, dict) and prop_order:
        keys = sorted(props, key=lambda k: (prop_order.get(k, len(prop_order)), list(props).index(k)))
        out["properties"] = {k: props[k] for k in keys}
    return out


# llama-cpp-python's JSON grammars: at most one space between tokens (llama.cpp's allows newlines and
# indentation), also before a comma, and a space after the document; in strings the escape "\/" too.
# Raw control characters in a string stay refused (llama-cpp-python allows them: invalid JSON).
_PEER_RULES = {
    "space": SPACE_RULE,
    "char": r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
}


_SPACE_BEFORE_COMMA = re.compile(r'(?<!space )"," space')


def convert_json_schema(schema_json: str) -> str:
    """GBNF for a JSON schema (JSON text) by llama.cpp's converter, accepting the documents that
    llama-cpp-python's converter accepts, so that constrained greedy output is the same as on it."""
    lines = []
    for line in str(_core.json_schema_to_grammar(schema_json)).splitlines():
        m = _RULE_LINE.match(line)
        out = line
        if m and m.group(1) in _PEER_RULES:
            out = f"{m.group(1)} ::= {_PEER_RULES[m.group(1)]}"
        elif m and m.group(1) == "root":
            out = f"root ::= ( {m.group(2)} ) space"
        lines.append(_SPACE_BEFORE_COMMA.sub('space "," space', out))
    return "\n".join(lines) + "\n"


class SchemaConverter:
    """A JSON schema to a GBNF grammar, by llama.cpp's converter (``visit`` the schema as the root rule,
    then ``format_grammar``). ``prop_order`` ranks property names (lower first) over the schema's order.
    ``dotall`` and ``raw_pattern`` are not supported (they raise ``NotImplementedError``); references to
    other documents are never fetched."""

    def __init__(self, *, prop_order: Mapping[str, int] | None = None, allow_fetch: bool = False,
                 dotall: bool = False, raw_pattern: bool = False) -> None:
        if dotall or raw_pattern:
            raise NotImplementedError("SchemaConverter: dotall and raw_pattern are not supported by "
                                      "llama.cpp's JSON schema converter")
        self._prop_order = dict(prop_order or {})
        self._allow_fetch = allow_fetch
        self._rules: dict[str, str] = {}
        self._refs: dict[str, Any] = {}

    def resolve_refs(self, schema: dict[str, Any], url: str) -> dict[str, Any]:
        """The schema (its local ``$ref`` s are resolved when it is converted)."""
        return schema

    def visit(self, schema: Any, name: str) -> str:
        """Add the rules of ``schema`` as the grammar's root; returns the root rule's name."""
        if name not in ("", "root"):
            raise NotImplementedError("SchemaConverter.visit: only the root rule (name '' or 'root') can be "
                                      "converted by llama.cpp's JSON schema converter")
        if not isinstance(schema, (dict, bool)):
            raise GrammarError("a JSON schema must be an object (or true/false)")
        check_json_schema(schema)  # depth and $ref limits, before anything recurses through it
        text = convert_json_schema(json.dumps(_ordered(schema, self._prop_order)))
        for line in text.splitlines():
            m = _RULE_LINE.match(line)
            if m:
                self._rules[m.group(1)] = m.group(2)
        return "root"

    def format_grammar(self) -> str:
        """The grammar: one ``name ::= body`` line per rule, by name."""
        return "\n".join(f"{name} ::= {rule}" for name, rule in sorted(self._rules.items()))


__all__ = [
    "ARITHMETIC_GBNF", "CHESS_GBNF", "C_GBNF", "DOT", "DOTALL", "ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS",
    "GRAMMAR_LITERAL_ESCAPES", "GRAMMAR_LITERAL_ESCAPE_RE", "INVALID_RULE_CHARS_RE", "JAPANESE_GBNF",
    "JSON_ARR_GBNF", "LIST_GBNF", "NON_LITERAL_SET", "PRIMITIVE_RULES", "RESERVED_NAMES", "SPACE_RULE",
    "STRING_FORMAT_RULES", "BuiltinRule", "SchemaConverter",
]
