"""Hostile and random chat templates, for the Jinja engine's resource limits.

A chat template comes from the model file (GGUF ``tokenizer.chat_template``), so a model can carry a
template that recurses, loops or allocates without end. :data:`HOSTILE` holds one template per known
shape (each named); :func:`random_templates` combines the same building blocks at random, for the
fuzzer (``scripts/fuzz_templates.py``). Every template here must end in a Python exception (or a
normal render), never in a dead process, a run without a time limit or unbounded memory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Hostile:
    name: str
    template: str
    kind: str  # "stack" (deep native recursion), "time" (runs without end) or "memory"
    trips: bool = True  # False: renders, or fails for another reason, within the limits
    renders: bool = False  # True: must render (work that was once too slow for the limits, now quick)


def _nest(open_: str, close: str, inner: str, n: int) -> str:
    return open_ * n + inner + close * n


HOSTILE: tuple[Hostile, ...] = (
    # recursion and nesting: the native stack
    Hostile("recursive_macro", "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}", "stack"),
    Hostile("mutual_macros",
            "{% macro a(x) %}{{ b(x) }}{% endmacro %}{% macro b(x) %}{{ a(x) }}{% endmacro %}{{ a(1) }}",
            "stack"),
    Hostile("recursive_caller",
            "{% macro f() %}{% call f() %}x{% endcall %}{% endmacro %}{{ f() }}", "stack"),
    Hostile("nested_if", _nest("{% if true %}", "{% endif %}", "x", 20000), "stack"),
    Hostile("nested_for", _nest("{% for m in messages %}", "{% endfor %}", "x", 20000), "stack"),
    Hostile("nested_macro_defs", _nest("{% macro m() %}", "{% endmacro %}", "x", 20000), "stack"),
    Hostile("elif_chain", "{% if false %}" + "{% elif false %}" * 30000 + "{% endif %}", "stack"),
    Hostile("nested_parens", "{{ " + _nest("(", ")", "1", 200000) + " }}", "stack"),
    Hostile("nested_lists", "{{ " + _nest("[", "]", "1", 200000) + " }}", "stack"),
    Hostile("nested_dicts", "{{ " + _nest("{'a': ", "}", "1", 100000) + " }}", "stack"),
    Hostile("not_chain", "{{ " + "not " * 200000 + "true }}", "stack"),
    Hostile("unary_minus_chain", "{{ " + "-" * 200000 + "1 }}", "stack"),
    Hostile("plus_chain", "{{ 1" + " + 1" * 300000 + " }}", "stack"),
    Hostile("deep_filters", "{{ 'a'" + "|upper" * 300000 + " }}", "stack"),
    Hostile("member_chain", "{{ messages" + ".x" * 300000 + " }}", "stack"),
    Hostile("self_list_print", "{% set a = [] %}{% set _ = a.append(a) %}{{ a }}", "stack"),
    Hostile("self_list_tojson", "{% set a = [] %}{% set _ = a.append(a) %}{{ a|tojson }}", "stack"),
    Hostile("self_list_compare", "{% set a = [] %}{% set _ = a.append(a) %}{{ a == [a] }}", "stack",
            trips=False),  # unhashable lists compare unequal without looking inside
    Hostile("self_namespace",
            "{% set ns = namespace(x=1) %}{% set ns.x = ns %}{{ ns }}{{ ns|tojson }}", "stack"),
    Hostile("self_dict_update",
            "{% set d = {'k': 1} %}{% set _ = d.update({'self': d}) %}{{ d|tojson }}", "stack",
            trips=False),  # this engine's dicts have no update()
    Hostile("deep_list_chain",
            "{% set ns = namespace(x=[]) %}{% for i in range(1000000) %}{% set ns.x = [ns.x] %}"
            "{% endfor %}{{ ns.x|length }}", "stack"),
    # loops: time
    Hostile("range_1e9", "{% for i in range(1000000000) %}{% endfor %}", "time"),
    # a long needle that almost matches everywhere: a substring search that is text x needle took 30 s
    # a step; in linear time it renders
    Hostile("substring_search",
            '{% set a = "a" * 200000 %}{% set b = "a" * 100000 ~ "b" %}{% for i in range(40) %}'
            '{% if b in a %}x{% endif %}{% set n = a.split(b)|length %}{% set r = a.replace(b, "") %}'
            '{% endfor %}', "time", trips=False, renders=True),
    # the same from the right: rsplit searched with rfind, text x needle per search
    Hostile("rsplit_search",
            '{% set a = "a" * 200000 %}{% set b = "a" * 100000 ~ "b" %}{% set c = a ~ b ~ a %}'
            '{% for i in range(10) %}{% set n = a.rsplit(b)|length %}{% set m = c.rsplit(b, 1)|length %}'
            '{% endfor %}', "time", trips=False, renders=True),
    Hostile("range_1e7_loop", "{% for i in range(10000000) %}x{% endfor %}", "time"),
    Hostile("nested_loops",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "time"),
    Hostile("loop_over_messages_forever",
            "{% for i in range(3000) %}{% for j in range(3000) %}{% for m in messages %}{{ m.role }}"
            "{% endfor %}{% endfor %}{% endfor %}", "time"),
    Hostile("macro_fanout",
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}",
            "time"),
    Hostile("quadratic_replace",
            "{% set s = 'ab' * 100000 %}{{ s|replace('a', 'xyz')|replace('x', 'xx')|length }}", "time",
            trips=False),  # replace is linear now (it was quadratic in the number of matches)
    # allocation: memory
    Hostile("range_list_1e9", "{{ range(1000000000)|length }}", "memory"),
    Hostile("range_huge", "{{ range(1000000000000000)|length }}", "memory"),
    Hostile("string_times_1e10", "{{ ('a' * 10000000000)|length }}", "memory"),
    Hostile("string_doubling",
            "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}{{ ns.s|length }}", "memory"),
    Hostile("list_doubling",
            "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}"
            "{% endfor %}{{ ns.l|length }}", "memory"),
    Hostile("join_huge", "{{ range(100000000)|join(',')|length }}", "memory"),
    Hostile("append_forever",
            "{% set a = [] %}{% for i in range(1000000000) %}{% set _ = a.append(i) %}{% endfor %}",
            "memory"),
    Hostile("replace_empty", "{{ ('a' * 100000)|replace('', 'bbbbbbbbbb' * 10000)|length }}", "memory"),
    Hostile("indent_width", "{{ 'a\\nb\\nc'|indent(10000000000, true) }}", "memory"),
    Hostile("tojson_indent", "{{ [[[[1]]]]|tojson(indent=1000000000) }}", "memory"),
    Hostile("output_flood", "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "memory"),
)

# a normal template, for the cases that must still work
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_BLOCKS = (
    "{{ f(x) }}", "{% for i in range(N) %}B{% endfor %}", "{% if x %}B{% endif %}", "{{ 'a' * N }}",
    "{% set ns.v = [ns.v] %}", "{% set _ = ns.l.append(ns.l) %}", "{{ ns.l }}", "{{ ns.l|tojson }}",
    "{{ range(N)|join(',') }}", "{% set ns.s = ns.s ~ ns.s %}", "{{ messages|tojson(indent=N) }}",
    "{% for m in messages %}B{% endfor %}", "{{ (((x))) }}", "{{ x|upper|lower|trim }}",
)


def random_templates(seed: int, n: int) -> list[str]:
    """``n`` random templates built from the hostile blocks, nested and repeated at random sizes."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        depth = rng.choice([1, 2, 4, 50, 500, 5000])
        body = "x"
        for _ in range(depth):
            block = rng.choice(_BLOCKS)
            body = block.replace("B", body, 1) if "B" in block else block + body
        size = str(rng.choice([3, 1000, 10**6, 10**9, 10**12]))
        prelude = ("{% macro f(x) %}{{ f(x) }}{% endmacro %}{% set x = 1 %}"
                   "{% set ns = namespace(v=[], l=[], s='ab') %}")
        out.append(prelude + body.replace("N", size))
    return out


# ---------------------------------------------------------------- templates in GGUF files

def write_with_template(base: str | Path, template: str, out: str | Path, **kvs: Any) -> Path:
    """A copy of the GGUF ``base`` whose ``tokenizer.chat_template`` is ``template`` (plus any other
    string KVs given as ``key=value`` with dots written as double underscores)."""
    import gguf_mutate as gm
    from gguf import GGUFValueType as VT

    img = gm.read_image(base)
    values = {"tokenizer.chat_template": template, **{k.replace("__", "."): v for k, v in kvs.items()}}
    img.kvs = [kv for kv in img.kvs if kv.key not in values]
    img.kvs += [gm.KV(k, VT.STRING, v) for k, v in values.items()]
    gm.write_image(img, out)
    return Path(out)
