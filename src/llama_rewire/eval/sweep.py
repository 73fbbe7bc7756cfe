"""Layer sensitivity: one activation applied to each layer (or group of layers) alone, or to the first k."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ..activations import Activation, parse, parse_activation
from .measure import measure
from .windows import check_ctx, check_llm, finite_or_none, make_windows

if TYPE_CHECKING:
    from ..llama import Llama

Layers = Union[None, str, Sequence[int]]
ActArg = Union[str, Mapping[str, Any], Activation]

CSV_FIELDS = ("label", "spec", "ppl", "ppl_stderr", "delta_ppl", "kl_mean", "kl_max", "top1_agreement")


@dataclass
class SweepRow:
    """One configuration: ``act`` on ``layers``, everything else the model's own."""

    layers: list[int]
    label: str  # the layers as ranges: "3", "0-3", "0-2,5"
    spec: str  # the spec that was run: "0-3:relu"
    ppl: float
    ppl_stderr: float
    delta_ppl: float  # ppl - the original's
    kl_mean: float  # KL(original || this), nats per scored token
    kl_max: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class SweepResult:
    act: str
    group: int
    cumulative: bool
    ppl_original: float
    ppl_original_stderr: float
    n_tokens: int
    n_windows: int
    n_windows_total: int
    n_ctx: int
    model: str = ""
    interrupted: bool = False
    rows: list[SweepRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in asdict(self).items()}
        d["rows"] = [r.to_dict() for r in self.rows]
        return d

    def to_csv(self) -> str:
        """A header, then one line per configuration."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for r in self.rows:
            d = r.to_dict()
            w.writerow(["" if d[k] is None else d[k] for k in CSV_FIELDS])
        return buf.getvalue()

    def table(self) -> str:
        """The rows as an aligned text table, the original first."""
        width = max([8, *(len(r.label) for r in self.rows)])
        head = f"{'layers':<{width}}  {'PPL':>10}  {'dPPL':>10}  {'KL mean':>9}  {'KL max':>9}  {'top-1':>7}"
        lines = [head, f"{'original':<{width}}  {self.ppl_original:10.4f}"]
        for r in self.rows:
            lines.append(f"{r.label:<{width}}  {r.ppl:10.4f}  {r.delta_ppl:+10.4f}  {r.kl_mean:9.5f}  "
                         f"{r.kl_max:9.4f}  {100 * r.top1_agreement:6.2f}%")
        return "\n".join(lines)


def ranges_text(layers: Sequence[int], sep: str = ",") -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return sep.join(parts)


def parse_layers(layers: Layers, n_layer: int) -> list[int]:
    """The layers to sweep, sorted: None (all), "0-5,8" or a sequence of indices (negative from the end)."""
    if layers is None:
        return list(range(n_layer))
    picked: list[int] = []
    if isinstance(layers, str):
        for part in (p.strip() for p in layers.split(",")):
            m = re.fullmatch(r"(-?\d+)(?:\s*(?:-|\.\.)\s*(-?\d+))?", part)
            if not m:
                raise ValueError(f"layers {layers!r}: cannot parse {part!r} (expected e.g. '0-5,8')")
            a = _layer(int(m.group(1)), n_layer)
            b = a if m.group(2) is None else _layer(int(m.group(2)), n_layer)
            if a > b:
                raise ValueError(f"layers {layers!r}: range {part!r} goes backwards")
            picked += range(a, b + 1)
    else:
        for x in layers:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"a layer is an integer, got {x!r}")
            picked.append(_layer(x, n_layer))
    if not picked:
        raise ValueError("no layer to sweep")
    return sorted(set(picked))


def _layer(index: int, n_layer: int) -> int:
    il = index + n_layer if index < 0 else index
    if not 0 <= il < n_layer:
        raise ValueError(f"layer {index} is out of range (the model has {n_layer} layers, 0-{n_layer - 1})")
    return il


def configurations(layers: list[int], group: int, cumulative: bool) -> list[list[int]]:
    """Consecutive groups of ``group`` layers, or (cumulative) the first group, the first two..."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be a positive integer, got {group!r}")
    groups = [layers[i : i + group] for i in range(0, len(layers), group)]
    if not cumulative:
        return groups
    return [[il for g in groups[: k + 1] for il in g] for k in range(len(groups))]


def sweep_act(act: ActArg) -> tuple[Activation, str]:
    """The one activation a sweep applies, and its text for specs."""
    if isinstance(act, str) and ":" in act:
        raise ValueError(f"a sweep takes one activation (e.g. relu or leaky_relu(0.05)), applied to each "
                         f"layer in turn, not a spec: got {act!r}")
    parsed = parse_activation(act, where="sweep activation")
    if parsed.name == "default":
        raise ValueError("sweeping 'default' would compare the model with itself: name an activation")
    return parsed, act.strip() if isinstance(act, str) else str(parsed)


def sweep(llm: Llama, text: str, act: ActArg, n_ctx: int = 512, *, group: int = 1, cumulative: bool = False,
          layers: Layers = None, max_windows: int | None = None, progress: bool = False) -> SweepResult:
    """Apply ``act`` to each layer (or group of ``group`` layers) alone, or with ``cumulative`` to the
    first k groups, and measure each configuration against the original on the same windows.

    ``layers`` restricts the sweep (e.g. "0-11"). ``llm`` needs ``logits_all=True`` and a context of at
    least ``n_ctx`` (see :func:`load`); its activation table is restored afterwards. Ctrl-C returns the
    completed windows' figures with ``interrupted=True``.
    """
    check_llm(llm, check_ctx(n_ctx))
    _, act_text = sweep_act(act)
    configs = configurations(parse_layers(layers, llm.n_layer()), group, cumulative)
    specs = [", ".join(f"{r}:{act_text}" for r in ranges_text(c).split(",")) for c in configs]
    for s in specs:
        parse(s, llm.n_layer())  # checked in the form that will run, before any work
    windows = make_windows(llm, text, n_ctx, max_windows)

    m = measure(llm, windows, specs, progress=progress, desc="sweep")
    p0, e0 = m.original.ppl()
    result = SweepResult(
        act=act_text, group=group, cumulative=cumulative, ppl_original=p0, ppl_original_stderr=e0,
        n_tokens=m.original.n_tokens, n_windows=m.n_windows, n_windows_total=windows.count, n_ctx=n_ctx,
        model=llm.model_path, interrupted=m.interrupted,
    )
    for c, s, t in zip(configs, specs, m.rewired):
        p, e = t.ppl()
        result.rows.append(SweepRow(
            layers=c, label=ranges_text(c), spec=s, ppl=p, ppl_stderr=e, delta_ppl=p - p0,
            kl_mean=t.kl_mean(), kl_max=t.kl_max(), top1_agreement=t.top1_agreement(),
        ))
    return result
