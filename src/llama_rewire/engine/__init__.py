"""The engine: what sits on the native handles and imports nothing above it.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``sequence``       Sequence: one sequence id of a context (its tokens, what its KV cache holds,
                   the logits of its last token, prefix reuse and rollback); Memory: whether a
                   model's cache can be cut back; prefix_len
``sampling``       SamplingParams: how a completion samples (checked once, read by the native
                   sampler by field name); sample_row: one token from one row of logits, through an
                   optional logits_processor
=================  ===========================================================================
"""

from __future__ import annotations

from .sampling import SamplingParams, sample_row
from .sequence import Memory, Sequence, prefix_len

__all__ = ["Memory", "SamplingParams", "Sequence", "prefix_len", "sample_row"]
