"""Layer sensitivity: one wiring entry applied to each layer (or group of layers) alone, or to the first k.

The entry is an activation (``relu``, ``leaky_relu(0.05)``, an expression) or a knob
(``skip=layer``: which layers can be dropped? ``experts_used=1``: where does top-1 routing hurt?
``ffn_scale=0.5``, ``heads_off=[0]``...).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ..wiring.activations import Activation, parse_activation
from ..wiring.knobs import is_identity, parse_value
from ..wiring.spec import parse_wiring
from .measure import measure
from .windows import check_ctx, check_llm, finite_or_none, make_windows

if TYPE_CHECKING:
    from ..llama import Llama

Layers = Union[None, str, Sequence[int]]
ActArg = Union[str, Mapping[str, Any], Activation]

CSV_FIELDS = ("label", "spec", "ppl", "ppl_stderr", "delta_ppl", "kl_mean", "kl_max", "top1_agreement")


@dataclass
class SweepRow:
    """One configuration: the swept entry on ``layers``, everything else the model's own."""

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
    act: str  # the entry swept: an activation, or knob=value
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


_KNOB_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)$", re.DOTALL)


def sweep_act(act: ActArg) -> tuple[Activation | None, str]:
    """The one entry a sweep applies, and its text for specs: an activation (returned parsed), or a
    ``knob=value`` entry (returned as None, its text normalised)."""
    if isinstance(act, str) and ":" in act:
        raise ValueError(f"a sweep takes one entry (e.g. relu, leaky_relu(0.05) or skip=layer), applied to "
                         f"each layer in turn, not a spec: got {act!r}")
    m = _KNOB_ENTRY.match(act) if isinstance(act, str) else None
    if m and isinstance(act, str):
        knob = m.group(1).strip()
        where = f"sweep entry {act!r}"
        value = parse_value(knob, m.group(2).strip(), where)  # a bad knob or value fails here
        if knob == "act" or knob.startswith("act."):
            value = parse_activation(m.group(2).strip(), where=where)
        if is_identity(knob, value) or (isinstance(value, Activation) and value.name == "default"):
            raise ValueError(f"sweeping {act.strip()!r} would compare the model with itself: name a change")
        return None, f"{knob}={m.group(2).strip()}"
    parsed = parse_activation(act, where="sweep activation")
    if parsed.name == "default":
        raise ValueError("sweeping 'default' would compare the model with itself: name an activation")
    return parsed, act.strip() if isinstance(act, str) else str(parsed)


def applicable_layers(llm: Llama, entry: str) -> list[int]:
    """The layers that can take ``entry`` (e.g. skip=attn not where later layers reuse the KV cache,
    experts_used only where there are experts)."""
    out = []
    for il in range(llm.n_layer()):
        try:
            parse_wiring(f"{il}:{entry}", llm.layout)
        except ValueError:
            continue
        out.append(il)
    return out


def sweep(llm: Llama, text: str, act: ActArg, n_ctx: int = 512, *, group: int = 1, cumulative: bool = False,
          layers: Layers = None, max_windows: int | None = None, progress: bool = False) -> SweepResult:
    """Apply ``act`` (an activation or a ``knob=value`` entry, e.g. ``skip=layer``) to each layer (or
    group of ``group`` layers) alone, or with ``cumulative`` to the first k groups, and measure each
    configuration against the original on the same windows.

    ``layers`` restricts the sweep (e.g. "0-11"); by default it covers every layer that can take the
    entry. ``llm`` needs ``logits_all=True`` and a context of at least ``n_ctx`` (see :func:`load`); its
    wiring is restored afterwards. Ctrl-C returns the completed windows' figures with ``interrupted=True``.
    """
    check_llm(llm, check_ctx(n_ctx))
    _, act_text = sweep_act(act)
    if layers is None:
        picked = applicable_layers(llm, act_text)
        if not picked:
            parse_wiring(f"0:{act_text}", llm.layout)  # raises the reason for layer 0
            raise ValueError(f"no layer of the model can take {act_text!r}")
    else:
        picked = parse_layers(layers, llm.n_layer())
    # e.g. experts_used=k where k is the layer's own: that layer would be compared with itself
    picked = [il for il in picked if not parse_wiring(f"{il}:{act_text}", llm.layout).is_identity()]
    if not picked:
        raise ValueError(f"sweeping {act_text!r} would compare the model with itself (it is what these "
                         "layers do already): name a change")
    configs = configurations(picked, group, cumulative)
    specs = [", ".join(f"{r}:{act_text}" for r in ranges_text(c).split(",")) for c in configs]
    for s in specs:
        parse_wiring(s, llm.layout)  # checked in the form that will run, before any work
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
