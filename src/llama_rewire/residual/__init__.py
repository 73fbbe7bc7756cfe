"""Reading and writing the residual stream.

Points of each layer, by name (the same names for taps, edits, captures and plots):

==============  ===========================================================================  ======
name            what it is                                                                   width
==============  ===========================================================================  ======
``resid_post``  the residual stream after the layer (where llama.cpp's control vectors add)  n_embd
``attn_out``    attention's contribution to it (after its post-norm and scale, if any)       n_embd
``ffn_out``     the FFN's contribution (after its post-norm and scale, if any)               n_embd
``ffn_act``     the input of ffn_down, ``act(gate) * up``, of a dense FFN                    n_ff
==============  ===========================================================================  ======

Read: ``llm.capture(text, taps=("resid_post",), layers=None)`` and ``llm.logit_lens(text)``.
Write: :class:`Steer` (add ``alpha * v``), :class:`Ablate` (remove directions) and :class:`Patch`
(replace values at positions), set with ``llm.set_edits([...])`` or ``llm.set_steering``,
``llm.set_ablation``, ``llm.set_patch``. Control vectors are files in llama.cpp's format
(:class:`ControlVector`); :func:`contrastive_vector` builds one from paired prompts (CAA).
"""

from .caa import contrastive_vector
from .cvec import ControlVector
from .edits import POINTS, TOKENS, Ablate, Edit, Patch, Steer
from .lens import LogitLens

__all__ = [
    "POINTS",
    "TOKENS",
    "Ablate",
    "ControlVector",
    "Edit",
    "LogitLens",
    "Patch",
    "Steer",
    "contrastive_vector",
]
