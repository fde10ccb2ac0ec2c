"""Per-layer cost summaries of a model, the planner's and the latency predictor's input.

A description of a layer, not of a device: the zoo (:func:`dslth_edge.learn.models.layer_costs`)
fills it, the planner, the training-memory model and the latency model read it.

A :class:`LayerCost` describes one weight layer at full width (keep ratio 1). Costs at
a keep ratio follow from channel-structured shrinking: a layer that keeps a fraction
``k_out`` of its output channels and receives a fraction ``k_in`` of its input
channels has ``params * k_out * k_in`` weights and ``macs * k_out * k_in`` MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayerCost"]


@dataclass(frozen=True)
class LayerCost:
    """Dense (keep 1.0) cost of one weight layer for a single input sample."""

    name: str  # module path in the model, e.g. "features.0"
    kind: str  # "conv" | "depthwise" | "linear"
    in_channels: int  # input channels (features for linear)
    out_channels: int  # output channels (features for linear)
    params: int  # weight elements (no bias: masked layers have none)
    macs: int  # multiply-accumulates per sample
    in_elems: int  # input activation elements per sample
    out_elems: int  # output activation elements per sample
    input_from: str | None  # layer whose output channels are this layer's inputs (None: network input)
    prunable_out: bool  # False for the classifier: its outputs are the classes
