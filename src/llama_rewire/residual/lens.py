"""The logit lens's result: per layer and position, the top tokens and their log-probabilities."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _show(piece: str, width: int = 10) -> str:
    """A token's text for a table cell or a plot label: newlines, tabs and other control characters
    escaped (a raw one would move a terminal's cursor, and fonts have no glyph for it)."""
    s = piece.replace("\n", "\\n").replace("\t", "\\t")
    s = "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in s
    )
    return s if len(s) <= width else s[: width - 1] + "…"


@dataclass
class LogitLens:
    """``ids[j, t]`` / ``logprobs[j, t]``: the top-k token ids and log-probabilities at position t after
    layer ``layers[j]``; ``tokens`` the input ids and ``token_text`` their text; ``vocab`` the text of
    every id that appears in ``ids``."""

    tokens: list[int]
    token_text: list[str]
    layers: list[int]
    ids: np.ndarray
    logprobs: np.ndarray
    vocab: dict[int, str]

    def top(self, layer: int, position: int) -> list[tuple[str, float]]:
        """The top tokens (text, probability) after ``layer`` at ``position``."""
        j = self.layers.index(layer)
        return [
            (self.vocab[int(t)], float(np.exp(lp)))
            for t, lp in zip(self.ids[j, position], self.logprobs[j, position])
        ]

    def table(self, width: int = 10) -> str:
        """One row per layer, one column per position: the top token and its probability."""
        head = ["layer"] + [_show(t, width) for t in self.token_text]
        rows = [head]
        for j, il in enumerate(self.layers):
            rows.append(
                [str(il)]
                + [
                    f"{_show(self.vocab[int(self.ids[j, t, 0])], width)} {np.exp(self.logprobs[j, t, 0]):.2f}"
                    for t in range(len(self.tokens))
                ]
            )
        cols = [max(len(r[c]) for r in rows) for c in range(len(head))]
        return "\n".join("  ".join(cell.ljust(cols[c]) for c, cell in enumerate(r)).rstrip() for r in rows)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """A heat map (rows: layers, columns: positions; colour and label: the top token and its
        probability) as a PNG."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ValueError("plotting needs matplotlib: pip install matplotlib") from None
        n_l, n_t = len(self.layers), len(self.tokens)
        fig = Figure(figsize=(max(6.0, 1.1 * n_t + 1.5), max(3.0, 0.32 * n_l + 1.5)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        prob = np.exp(self.logprobs[:, :, 0])
        im = ax.imshow(prob, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
        for j in range(n_l):
            for t in range(n_t):
                ax.text(
                    t,
                    j,
                    _show(self.vocab[int(self.ids[j, t, 0])], 8),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if prob[j, t] < 0.6 else "black",
                )
        ax.set_xticks(range(n_t), [_show(s, 8) for s in self.token_text], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n_l), [str(il) for il in self.layers], fontsize=7)
        ax.set_xlabel("position (input token)")
        ax.set_ylabel("layer")
        ax.set_title("logit lens: top token after each layer")
        fig.colorbar(im, ax=ax, label="probability of the top token")
        p = Path(path)
        with warnings.catch_warnings():  # a token in a script the font lacks is drawn as a box
            warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            fig.savefig(p, format="png", dpi=110)
        return p
