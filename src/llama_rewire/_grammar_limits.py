"""Limits on what a grammar, a JSON schema or a chat may ask of llama.cpp, checked before it sees them.

llama.cpp's GBNF parser is recursive descent with no depth limit (50,000 nested parentheses overflow
the stack); it expands ``x{m,n}`` into copies of ``x`` and n - m generated rules; it checks the rules for
left recursion recursively, one frame per rule of a chain and once per way a rule can start; and it
makes one parse stack per way the grammar can start, comparing each with all the others. Its JSON
schema converter recurses once per level of the schema and per ``$ref`` it follows. Each limit below
bounds one of those; a grammar or schema beyond one is refused with a ``GrammarError`` (a ValueError)
that names the limit.

The scan here is not a parser: it finds the structure llama.cpp will build (rules, their alternatives,
groups, repetitions, literals) well enough to bound it, and leaves reporting syntax errors to llama.cpp.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ContextOverflowError, GrammarError

# GBNF text longer than this is refused (characters)
MAX_GRAMMAR_CHARS = 1 << 18
# parentheses nested deeper than this are refused (llama.cpp's parser recurses once per level)
MAX_GRAMMAR_NESTING = 256
# rules after expansion: the defined ones, one per parenthesised group and the ones repetitions generate
MAX_GRAMMAR_RULES = 20_000
# the longest chain of rules each starting with the next: llama.cpp checks it for left recursion one
# stack frame per rule, and its set-up time grows with the square of the chain's length
MAX_GRAMMAR_CHAIN = 1000
# the ways a rule can start, counted through the rules it starts with: llama.cpp makes one parse stack
# for each, compares every new stack with all the others and matches every candidate token against each
# (16 rules of two alternatives each starting with the next make 65,536 stacks: 47 s); llama.cpp itself
# (patch 0014) refuses more than this many stacks at any point of a parse
MAX_GRAMMAR_PATHS = 1024
# a character class longer than this is refused: llama.cpp matches a character against its ranges one by
# one, for every candidate token, on every parse stack, at every step (80,000 ranges held sampling for
# minutes; 500 alternatives each starting with a class of 511 characters took 12 s a token)
MAX_GRAMMAR_CLASS = 128
# a repetition's lower bound above this is refused (llama.cpp's own threshold; an upper bound above it
# is taken by llama.cpp as no upper bound)
MAX_GRAMMAR_REPETITION = 2000
# grammar elements (characters of literals and classes, references, ...) after repetitions are expanded
MAX_GRAMMAR_ELEMENTS = 1 << 20
# a JSON schema's objects and arrays nested deeper than this are refused
MAX_JSON_SCHEMA_DEPTH = 64
# a JSON schema with more "$ref"s than this is refused (the converter recurses along chains of them)
MAX_JSON_SCHEMA_REFS = 1000
# an object schema with more properties than this is refused: the converter's rules for optional
# properties grow with the square of their number (3,000 held a server for minutes)
MAX_JSON_SCHEMA_PROPERTIES = 256

_WS = r"(?:[ \t\r\n]|\#[^\n]*)*"
_TOKENS = re.compile(
    r"""[ \t\r\n]*(?:
      (?P<space>\#[^\n]* | $)
    | (?P<literal>"(?:\\.|[^"\\])*"?)
    | (?P<chars>\[(?:\\.|[^\]\\])*\]?)
    | (?P<token>!?<[^>]*>?)
    | (?P<define>[A-Za-z0-9-]+[ \t]*::=)
    | (?P<names>(?:[A-Za-z0-9-]+(?![A-Za-z0-9-]|[ \t]*::=)[ \t\r\n]*)+)
    | (?P<repeat>\{""" + _WS + r"(?P<min>[0-9]*)" + _WS + r"(?:(?P<comma>,)" + _WS + r"(?P<max>[0-9]*)"
    + _WS + r""")?\}?)
    | (?P<other>.)
    )""",
    re.VERBOSE | re.DOTALL,
)


def _bound(digits: str) -> int:
    """A repetition bound; one too long to convert counts as larger than any limit."""
    return int(digits) if len(digits) <= 12 else 10**12


def check_grammar(gbnf: str) -> None:
    """Raise ``GrammarError`` when GBNF text exceeds one of the limits above."""
    try:
        gbnf.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (from a JSON escape): no text llama.cpp can read
        raise GrammarError(f"the grammar is not valid Unicode text: {e.reason} at character {e.start}") \
            from None
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"the grammar is {len(gbnf)} characters long; the limit is "
                           f"{MAX_GRAMMAR_CHARS} (MAX_GRAMMAR_CHARS)")
    depth = 0
    n_rules = 0  # defined rules, groups and the rules repetitions generate
    elements = 0
    last = 0  # elements of the item a repetition would apply to
    # the rules' shape: per rule its alternatives, each a list of items [rule referred to or -1 for a
    # terminal, whether the item may match nothing, whether it repeats]
    ids: dict[str, int] = {}
    alts: list[list[list[list[Any]]]] = []
    frames: list[int] = []  # the rule being written, the innermost group last

    def rule_id(name: str | None) -> int:
        if name is not None and name in ids:
            return ids[name]
        alts.append([])
        if name is not None:
            ids[name] = len(alts) - 1
        return len(alts) - 1

    for m in _TOKENS.finditer(gbnf):
        kind = m.lastgroup
        if kind is None or kind == "space":
            continue
        item = m.group(kind)  # without the whitespace before it
        seq = alts[frames[-1]][-1] if frames else None
        if kind == "repeat" or (kind == "other" and item in "*+?"):
            if kind == "other":
                low, high = (1, -1) if item == "+" else (0, -1 if item == "*" else 1)
            elif not m.group("min"):
                continue
            else:
                low = _bound(m.group("min"))
                if low > MAX_GRAMMAR_REPETITION:
                    raise GrammarError(f"grammar: the repetition {item!r} asks for at least {low}; the "
                                       f"limit is {MAX_GRAMMAR_REPETITION} (MAX_GRAMMAR_REPETITION)")
                high = low if m.group("comma") is None else _bound(m.group("max")) if m.group("max") else -1
            optional = 1 if high < 0 or high > MAX_GRAMMAR_REPETITION else high - low
            n_rules += optional
            elements += last * (low + optional) + 3 * optional
            if seq:
                seq[-1][2] = True
                seq[-1][1] = seq[-1][1] or low == 0
            continue
        last = 1
        if kind == "chars" and len(item) - 2 > MAX_GRAMMAR_CLASS:
            raise GrammarError(f"grammar: a character class of {len(item) - 2} characters; the limit is "
                               f"{MAX_GRAMMAR_CLASS} (MAX_GRAMMAR_CLASS)")
        if kind in ("literal", "chars"):
            last = max(1, len(item) - 2)
            if seq is not None:
                seq.append([-1, item == '""', False])
        elif kind == "names":
            names = item.split()
            elements += len(names) - 1
            if seq is not None:
                seq.extend([rule_id(name), False, False] for name in names)
        elif kind == "define":
            n_rules += 1
            last = 0
            frames[:] = [rule_id(item[:-3].rstrip())]
            alts[frames[0]].append([])
        elif item == "(":
            depth += 1
            n_rules += 1
            last = 0
            if depth > MAX_GRAMMAR_NESTING:
                raise GrammarError(f"grammar: parentheses nested deeper than {MAX_GRAMMAR_NESTING} "
                                   "(MAX_GRAMMAR_NESTING)")
            group = rule_id(None)
            if seq is not None:
                seq.append([group, False, False])
            frames.append(group)
            alts[group].append([])
        elif item == ")":
            depth = max(0, depth - 1)
            if len(frames) > 1:
                frames.pop()
        elif item == "|":
            last = 0
            if frames:
                alts[frames[-1]].append([])
                if len(alts[frames[-1]]) > MAX_GRAMMAR_PATHS:
                    raise _too_many_paths()
        elif seq is not None:  # a token, any character or something llama.cpp will refuse
            seq.append([-1, False, False])
        elements += max(last, 1)
        if n_rules > MAX_GRAMMAR_RULES:
            break
    if n_rules > MAX_GRAMMAR_RULES:
        raise GrammarError(f"the grammar makes more than {MAX_GRAMMAR_RULES} rules, counting groups and "
                           "the rules repetitions generate (MAX_GRAMMAR_RULES)")
    if elements > MAX_GRAMMAR_ELEMENTS:
        raise GrammarError(f"the grammar expands to about {elements} elements once its repetitions are "
                           f"written out; the limit is {MAX_GRAMMAR_ELEMENTS} (MAX_GRAMMAR_ELEMENTS)")
    _check_starts(alts)


def _too_many_paths() -> GrammarError:
    return GrammarError(f"grammar: a rule can start in more than {MAX_GRAMMAR_PATHS} ways, counting "
                        "through the rules it starts with (MAX_GRAMMAR_PATHS)")


def _nullable(alts: list[list[list[list[Any]]]]) -> list[bool]:
    """Which rules may match nothing (a worklist over the alternatives, linear in the grammar)."""
    nullable = [False] * len(alts)
    pending: list[int] = []  # per alternative without a terminal: its items not yet known to be nullable
    owner: list[int] = []
    watchers: list[list[int]] = [[] for _ in alts]
    work: list[int] = []
    for r, rule_alts in enumerate(alts):
        for alt in rule_alts:
            refs = [ref for ref, empty, _ in alt if not empty]
            if any(ref < 0 for ref in refs):
                continue
            k = len(pending)
            pending.append(len(refs))
            owner.append(r)
            for ref in refs:
                watchers[ref].append(k)
            if not refs and not nullable[r]:
                nullable[r] = True
                work.append(r)
    while work:
        for k in watchers[work.pop()]:
            pending[k] -= 1
            if pending[k] == 0 and not nullable[owner[k]]:
                nullable[owner[k]] = True
                work.append(owner[k])
    return nullable


def _check_starts(alts: list[list[list[list[Any]]]]) -> None:
    """Bound the chains of rules that start with a rule, and the ways each rule can start.

    A rule starts with the rules its alternatives begin with, and with those after them while the ones
    before may match nothing. A cycle there is left recursion, which llama.cpp refuses."""
    nullable = _nullable(alts)
    starts: list[list[int]] = [[] for _ in alts]
    for r, rule_alts in enumerate(alts):
        for alt in rule_alts:
            for ref, empty, _ in alt:
                if ref >= 0:
                    starts[r].append(ref)
                    if not (empty or nullable[ref]):
                        break
                elif not empty:
                    break
    paths = [0] * len(alts)
    chain = [0] * len(alts)
    state = [0] * len(alts)  # 0: not seen, 1: on the walk, 2: done
    for root in range(len(alts)):
        if state[root]:
            continue
        state[root] = 1
        walk = [(root, 0)]
        while walk:
            r, i = walk[-1]
            if i < len(starts[r]):
                walk[-1] = (r, i + 1)
                child = starts[r][i]
                if state[child] == 0:
                    state[child] = 1
                    walk.append((child, 0))
                continue
            walk.pop()
            state[r] = 2
            done = [c for c in starts[r] if state[c] == 2]
            paths[r] = min(len(alts[r]) + sum(paths[c] for c in done), 1 << 62)
            chain[r] = 1 + max((chain[c] for c in done), default=0)
            if paths[r] > MAX_GRAMMAR_PATHS:
                raise _too_many_paths()
            if chain[r] > MAX_GRAMMAR_CHAIN:
                raise GrammarError(f"grammar: a chain of more than {MAX_GRAMMAR_CHAIN} rules each starting "
                                   "with the next (MAX_GRAMMAR_CHAIN)")


def check_json_schema(schema: Any) -> None:
    """Raise ``GrammarError`` when a JSON schema (parsed) is nested too deep, has too many "$ref"s or an
    object of too many properties.

    Iterative, so that a schema nested deeper than Python's own recursion limit is refused too."""
    refs = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Sequence[Any] = list(value.values())
            refs += "$ref" in value
            props = value.get("properties")
            if isinstance(props, Mapping) and len(props) > MAX_JSON_SCHEMA_PROPERTIES:
                raise GrammarError(f"the JSON schema has an object of {len(props)} properties; the limit is "
                                   f"{MAX_JSON_SCHEMA_PROPERTIES} (MAX_JSON_SCHEMA_PROPERTIES)")
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > MAX_JSON_SCHEMA_DEPTH:
            raise GrammarError(f"the JSON schema is nested deeper than {MAX_JSON_SCHEMA_DEPTH} levels "
                               "(MAX_JSON_SCHEMA_DEPTH)")
        if refs > MAX_JSON_SCHEMA_REFS:
            raise GrammarError(f"the JSON schema has more than {MAX_JSON_SCHEMA_REFS} \"$ref\"s "
                               "(MAX_JSON_SCHEMA_REFS)")
        stack.extend((child, depth + 1) for child in children)


def load_json_schema(text: str) -> Any:
    """A JSON schema's text parsed, refused when it is nested too deep to parse or to convert."""
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise GrammarError(f"the JSON schema is nested deeper than {MAX_JSON_SCHEMA_DEPTH} levels "
                           "(MAX_JSON_SCHEMA_DEPTH)") from None
    except json.JSONDecodeError as e:
        raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    check_json_schema(parsed)
    return parsed


# -- chats --------------------------------------------------------------------------------------------


def check_chat(n_ctx: int, messages: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before the template renders it, a chat that cannot fit the context, and tools or
    functions whose parameter schemas are beyond the schema limits (templates convert them to grammars).

    Every chat template writes at least one token per message (its role markers), so a chat with as
    many messages as the context has positions (``n_ctx``) can never fit, whatever the messages hold."""
    if isinstance(messages, Sequence) and not isinstance(messages, str) and len(messages) >= n_ctx:
        raise ContextOverflowError(len(messages), n_ctx)
    for key in ("tools", "functions"):
        entries = kwargs.get(key)
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            continue
        for entry in entries:
            function = entry.get("function", entry) if isinstance(entry, Mapping) else None
            if isinstance(function, Mapping) and function.get("parameters") is not None:
                check_json_schema(function["parameters"])


__all__ = [
    "MAX_GRAMMAR_CHAIN",
    "MAX_GRAMMAR_CHARS",
    "MAX_GRAMMAR_ELEMENTS",
    "MAX_GRAMMAR_NESTING",
    "MAX_GRAMMAR_PATHS",
    "MAX_GRAMMAR_REPETITION",
    "MAX_GRAMMAR_RULES",
    "MAX_JSON_SCHEMA_DEPTH",
    "MAX_JSON_SCHEMA_REFS",
    "check_chat",
    "check_grammar",
    "check_json_schema",
    "load_json_schema",
]
