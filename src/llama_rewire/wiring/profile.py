"""Rewiring profiles: a complete rewiring in a JSON or TOML file.

Version 1 holds activations (and thresholds) only::

    {"format": "llama-rewire-profile", "version": 1,
     "activations": {"0": "silu@0.0123", "1": "silu@0.0151", "*": "gelu"},
     ...any other keys: provenance, e.g. the calibration settings}

``activations`` is any activation spec (a dict as above, or a string such as "0-11:relu, *:gelu").

Version 2 holds a whole wiring (:mod:`llama_rewire.wiring.spec`) under ``wiring``: a string, or a dict
with one table of knobs per layer group, as ``Wiring.save`` writes it::

    {"format": "llama-rewire-profile", "version": 2, "model": "...",
     "wiring": {"0-3": {"act": "relu", "ffn_scale": 0.5}, "5": {"heads_off": [0, 3]},
                "20": {"skip": "ffn"}}}

and in TOML::

    format = "llama-rewire-profile"
    version = 2
    model = "..."

    [wiring."0-3"]
    act = "relu"
    ffn_scale = 0.5

    [wiring."5"]
    heads_off = [0, 3]

A profile path is accepted wherever a spec is: ``Llama(activations="profile.json")``,
``llm.set_activations(Path("p.toml"))``, ``parse_wiring("p.toml", layout)``, and every CLI ``--act``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ActivationSpecError

FORMAT = "llama-rewire-profile"
SUFFIXES = (".json", ".toml")
VERSIONS = (1, 2)
_SPEC_KEY = {1: "activations", 2: "wiring"}
# how deep the tables and lists of a spec may nest (a profile needs 4: document, wiring, layer group,
# knob value); deeper data is refused before anything recurses through it
MAX_NESTING = 32


def check_nesting(value: object, where: str, error: type[ActivationSpecError] = ActivationSpecError) -> None:
    """Raise ``error`` when dicts and lists in ``value`` nest more than MAX_NESTING deep (a container
    that holds itself included); walks without recursion."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, Mapping):
            children = [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            children = list(v)
        else:
            continue
        if depth >= MAX_NESTING:
            raise error(f"{where}: nested more than {MAX_NESTING} deep")
        stack.extend((c, depth + 1) for c in children)


def is_profile_path(spec: object) -> bool:
    """A path-like, or a string that names a .json/.toml file (not an inline spec)."""
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and spec.strip().lower().endswith(SUFFIXES) and ":" not in spec.strip()[2:]


def _read_toml(data: bytes) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - older Pythons
        try:
            import tomli as tomllib
        except ImportError:
            raise ActivationSpecError(
                "reading TOML profiles on Python < 3.11 needs the 'tomli' package"
            ) from None
    return tomllib.loads(data.decode("utf-8"))


def _version(doc: dict[str, Any], p: Path) -> int:
    """The format version: as written, else from the keys (a plain {"activations": ...} is version 1)."""
    if "version" not in doc:
        return 2 if "wiring" in doc and "activations" not in doc else 1
    v = doc["version"]
    if isinstance(v, bool) or v not in VERSIONS:
        raise ActivationSpecError(f"profile {p}: version {v!r} is not one this llama-rewire reads "
                                  f"({', '.join(map(str, VERSIONS))})")
    return int(v)


def load_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole profile as a dict; raises ValueError for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ActivationSpecError(f"profile file not found: {p}")
    try:
        data = p.read_bytes()
        doc = _read_toml(data) if p.suffix.lower() == ".toml" else json.loads(data)
    except (ValueError, OSError) as e:
        raise ActivationSpecError(f"cannot read profile {p}: {e}") from None
    except RecursionError:  # the parsers recurse into nested tables and lists
        raise ActivationSpecError(f"cannot read profile {p}: nested more than {MAX_NESTING} deep") from None
    check_nesting(doc, f"profile {p}")
    if not isinstance(doc, dict) or ("activations" not in doc and "wiring" not in doc):
        raise ActivationSpecError(f"profile {p} has no 'activations' (version 1) or 'wiring' (version 2) "
                                  "entry")
    version = _version(doc, p)
    key = _SPEC_KEY[version]
    if key not in doc:
        raise ActivationSpecError(f"profile {p} (version {version}) has no {key!r} entry")
    other = _SPEC_KEY[3 - version]
    if other in doc:
        raise ActivationSpecError(f"profile {p} (version {version}) holds {other!r}, which belongs to "
                                  f"version {3 - version}")
    if not isinstance(doc[key], (dict, str)):
        raise ActivationSpecError(f"profile {p}: {key!r} must be a table or a string")
    return doc


def profile_spec(path: str | os.PathLike[str]) -> dict[str, Any] | str:
    """The spec a profile holds: its activations (version 1) or its wiring (version 2)."""
    doc = load_profile(path)
    spec = doc["wiring"] if "wiring" in doc else doc["activations"]
    return dict(spec) if isinstance(spec, dict) else str(spec)


# ---------------------------------------------------------------- writing

def _toml_key(k: Any) -> str:
    k = str(k)
    return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ActivationSpecError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(header: list[str], table: dict[str, Any], lines: list[str]) -> None:
    """Plain keys first, then each sub-table under its own [a."b"] header."""
    subtables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    plain = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    if header and (plain or not subtables):
        lines += ["", f"[{'.'.join(header)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain]
    for k, v in subtables:
        _toml_table([*header, _toml_key(k)], v, lines)


def _to_toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    _toml_table([], doc, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _to_json(v: Any, depth: int = 0) -> str:
    """The document and its tables one key a line; anything deeper (a layer group's knobs) on one line."""
    if not isinstance(v, dict) or depth >= 2 or not v:
        return json.dumps(v)
    pad = "  " * (depth + 1)
    items = [f"{pad}{json.dumps(str(k))}: {_to_json(x, depth + 1)}" for k, x in v.items()]
    return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"


def _write(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    p = Path(path)
    text = _to_toml(doc) if p.suffix.lower() == ".toml" else _to_json(doc) + "\n"
    p.write_text(text, encoding="utf-8")
    return p


def save_profile(path: str | os.PathLike[str], activations: dict[str, str] | str, **meta: Any) -> Path:
    """Write an activations profile (version 1; JSON, or TOML for a .toml path); ``meta`` keys are stored
    alongside."""
    return _write(path, {"format": FORMAT, "version": 1, **meta, "activations": activations})


def save_wiring_profile(path: str | os.PathLike[str], wiring: dict[str, Any] | str, **meta: Any) -> Path:
    """Write a wiring profile (version 2): ``wiring`` in its dict form (``Wiring.to_dict()``) or a string."""
    for key in ("format", "version", "wiring", "activations"):
        if key in meta:
            raise ActivationSpecError(f"{key!r} is not a metadata key of a profile")
    return _write(path, {"format": FORMAT, "version": 2, **meta, "wiring": wiring})
