"""GraphSAGE with the mean aggregator, in plain torch, over sampled neighbourhoods.

A mini-batch (`workflows.sampler.Batch`) is a sampled computation tree: hop k lists, for every node
of hop k-1, `fanouts[k-1]` sampled neighbours (padding masked out) as indices into one table of the
batch's distinct nodes. The first layer projects each distinct node's features once and gathers;
mean-then-linear equals linear-then-mean, so this is GraphSAGE exactly, without materializing
(positions x features) — which for Cora's 1433-d features at evaluation fanouts would take gigabytes.
With all fanouts 0 the model sees no neighbours at all: it is the feature-only baseline (an MLP of
the same depth and width).
"""

from __future__ import annotations

import typing

import torch
from torch import nn


def masked_mean(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rows (N * fanout, D) grouped by N, mean over the unmasked ones; zero where none is."""
    n, fanout = mask.shape
    weight = mask.unsqueeze(-1).to(rows.dtype)
    total = (rows.reshape(n, fanout, rows.shape[-1]) * weight).sum(1)
    return total / weight.sum(1).clamp(min=1.0)


class SageLayer(nn.Module):
    """h'(v) = W_self h(v) + W_neigh mean{h(u) : u sampled neighbour of v}."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.self_lin = nn.Linear(in_dim, out_dim)
        self.neigh_lin = nn.Linear(in_dim, out_dim, bias=False)

    def combine(self, own: torch.Tensor, neighbours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """own (N, D); neighbours (N * fanout, D) with mask (N, fanout) -> (N, out_dim)."""
        return self.self_lin(own) + masked_mean(self.neigh_lin(neighbours), mask)


class GraphSage(nn.Module):
    """`num_layers` SAGE layers (one per sampled hop); the last one outputs class logits for the seeds."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden] * (num_layers - 1) + [num_classes]
        self.layers = nn.ModuleList(SageLayer(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, index: list[torch.Tensor],
                masks: list[torch.Tensor]) -> torch.Tensor:
        """features (U, F) of the distinct nodes; index[k] (rows of hop k,) into them, hop 0 = the seeds;
        masks[k] (rows of hop k, fanouts[k]). Returns (seeds, num_classes) logits."""
        return self.encode(features, index, masks)[0]

    def encode(self, features: torch.Tensor, index: list[torch.Tensor],
               masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) of the seeds; the embedding is their last hidden layer (what the last
        SAGE layer reads for the seed itself); a one-layer model has none and gives the input features."""
        if len(index) != len(self.layers) + 1 or len(masks) != len(self.layers):
            raise ValueError(f"the batch has {len(index) - 1} hops but the model has "
                             f"{len(self.layers)} layers: sample one hop per layer")
        first, *rest = typing.cast(list[SageLayer], list(self.layers))
        x = self.dropout(features)
        own, neigh = first.self_lin(x), first.neigh_lin(x)
        h = [own[index[k]] + masked_mean(neigh[index[k + 1]], masks[k]) for k in range(len(masks))]
        embedding = x[index[0]]
        for layer in rest:
            h = [self.dropout(torch.relu(t)) for t in h]
            embedding = h[0]
            h = [layer.combine(h[k], h[k + 1], masks[k]) for k in range(len(h) - 1)]
        return h[0], embedding
