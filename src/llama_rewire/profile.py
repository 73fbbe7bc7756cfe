"""Rewiring profiles: a complete rewiring (activations, thresholds) in a JSON or TOML file.

    {"format": "llama-rewire-profile", "version": 1,
     "activations": {"0": "silu@0.0123", "1": "silu@0.0151", "*": "gelu"},
     ...any other keys: provenance, e.g. the calibration settings}

``activations`` is any activation spec (a dict as above, or a string such as "0-11:relu, *:gelu").
A profile path is accepted wherever a spec is: ``Llama(activations="profile.json")``,
``llm.set_activations(Path("p.toml"))``, and every CLI ``--act``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ActivationSpecError

FORMAT = "llama-rewire-profile"
SUFFIXES = (".json", ".toml")


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
    if not isinstance(doc, dict) or "activations" not in doc:
        raise ActivationSpecError(f"profile {p} has no 'activations' entry")
    acts = doc["activations"]
    if not isinstance(acts, (dict, str)):
        raise ActivationSpecError(f"profile {p}: 'activations' must be a table or a string")
    return doc


def profile_spec(path: str | os.PathLike[str]) -> dict[str, Any] | str:
    """The activation spec a profile holds."""
    acts = load_profile(path)["activations"]
    return dict(acts) if isinstance(acts, dict) else str(acts)


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


def _to_toml(doc: dict[str, Any]) -> str:
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def save_profile(path: str | os.PathLike[str], activations: dict[str, str] | str, **meta: Any) -> Path:
    """Write a profile (JSON, or TOML for a .toml path); ``meta`` keys are stored alongside."""
    p = Path(path)
    doc: dict[str, Any] = {"format": FORMAT, "version": 1, **meta, "activations": activations}
    text = _to_toml(doc) if p.suffix.lower() == ".toml" else json.dumps(doc, indent=2) + "\n"
    p.write_text(text, encoding="utf-8")
    return p
