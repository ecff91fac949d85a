"""Whether a model's batches run on the event loop instead of its inference thread.

For a model whose batches take microseconds, the hand-off to the inference thread (submit,
wake-up, GIL ping-pong) costs more than the model. The decision is measured, never promised:
inline once 16 batches averaged under the bound, back to the thread after any batch over four
times the bound, so a model that turns slow blocks the loop at most once.
"""

from __future__ import annotations


class InlineGate:
    """``active`` says where the next batch runs; ``note`` feeds it each batch's time."""

    def __init__(self, below_s: float) -> None:
        self.below_s = below_s  # 0 = always hand off
        self.active = False
        self._runs = 0
        self._ema = 0.0

    def note(self, seconds: float) -> None:
        limit = self.below_s
        if limit <= 0:
            return
        self._runs += 1
        ema = self._ema
        self._ema = ema = seconds if self._runs == 1 else ema + 0.1 * (seconds - ema)
        self.active = self._runs >= 16 and ema < limit and seconds < 4 * limit
