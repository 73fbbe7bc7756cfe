"""``GET /metrics``: the served models' counters and gauges in Prometheus' text format."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import ModelPool

# name, type, help; counters end in _total
_COUNTERS = (
    ("requests_total", "completion and chat requests received"),
    ("prompt_tokens_total", "prompt tokens of the completed requests"),
    ("tokens_predicted_total", "completion tokens of the completed requests"),
)
_SLOT_COUNTERS = (  # models with parallel slots only
    ("prompt_tokens_evaluated_total", "prompt_tokens", "prompt tokens the slots evaluated"),
    ("prompt_tokens_cached_total", "prompt_tokens_cached", "prompt tokens taken from a slot's cache"),
    ("decodes_total", "decodes", "llama_decode calls of the slots' decode loop"),
    ("requests_cancelled_total", "cancelled", "slot requests whose stream was closed before the end"),
)
_GAUGES = (
    ("n_parallel", "n_parallel", "slots of the model"),
    ("slots_processing", "slots_processing", "slots running a request"),
    ("slots_idle", "slots_idle", "slots free for a request"),
    ("queue_length", "queue", "requests waiting for a slot"),
)


def _label(alias: str) -> str:
    escaped = alias.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{{model="{escaped}"}}'


def render_metrics(pool: ModelPool) -> str:
    """The exposition text for every model of ``pool``."""
    lines: list[str] = []
    models = list(pool.models.values())
    for name, help_text in _COUNTERS:
        key = name[: -len("_total")]
        lines += [f"# HELP llama_rewire_{name} {help_text}", f"# TYPE llama_rewire_{name} counter"]
        lines += [f"llama_rewire_{name}{_label(m.alias)} {m.counts[key]}" for m in models]
    slot_stats = {m.alias: m.llama.slots.stats() for m in models if m.parallel}
    for name, key, help_text in _SLOT_COUNTERS:
        lines += [f"# HELP llama_rewire_{name} {help_text}", f"# TYPE llama_rewire_{name} counter"]
        lines += [f"llama_rewire_{name}{_label(alias)} {stats[key]}" for alias, stats in slot_stats.items()]
    counts = {m.alias: m.slot_counts() for m in models}
    for name, key, help_text in _GAUGES:
        lines += [f"# HELP llama_rewire_{name} {help_text}", f"# TYPE llama_rewire_{name} gauge"]
        lines += [f"llama_rewire_{name}{_label(alias)} {c[key]}" for alias, c in counts.items()]
    return "\n".join(lines) + "\n"
