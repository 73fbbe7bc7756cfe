"""Token loops: what turns evaluated tokens into sampled ones, over an engine ``Sequence``.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``steps``          the plain step loop: sample a token from the last logits, evaluate it, again
``speculative``    the step loop with a draft model: guesses verified in one decode
=================  ===========================================================================
"""

from __future__ import annotations
