"""Parameter-holding layers created on the ``meta`` device without initialisation.

``nn.Linear`` and friends initialise their weights on construction; on the meta device that
first call costs ~2 s of lazy torch imports, and on a real device it would allocate and fill
memory that the checkpoint replaces anyway. These create empty meta parameters that
``load_state_dict(assign=True)`` swaps for the verified weight views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


class Linear(nn.Module):
    """``x @ weight.T + bias`` with ``weight`` of shape [out, in] (``nn.Linear``'s layout)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = _empty(n_out, n_in)
        self.bias = _empty(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv1D(nn.Module):
    """GPT-2's linear layer: ``x @ weight + bias`` with ``weight`` of shape [in, out]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = _empty(n_in, n_out)
        self.bias = _empty(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], -1)


class Embedding(nn.Module):
    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.weight = _empty(n, d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _empty(d)
        self.bias = _empty(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
