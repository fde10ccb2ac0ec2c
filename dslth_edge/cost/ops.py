"""The cost of one operator: what static analysis of a model file produces and the
latency model consumes.

``cost.analysis`` fills it from an ONNX graph, a .tflite file or a torch module;
the planner builds it from layer descriptions (:func:`dslth_edge.cost.latency.op_costs_from_layer_costs`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OpCost", "FC_OP_TYPES", "op_class"]

#: Operators whose MACs are a matrix-vector / matrix-matrix product (weights read once per
#: inference at batch 1: memory-bound on CPUs, unlike convolutions).
FC_OP_TYPES: frozenset[str] = frozenset({
    "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "Linear",
    "FULLY_CONNECTED", "BATCH_MATMUL",
})


@dataclass(frozen=True)
class OpCost:
    """Cost of one operator for one inference at the analysed batch size."""

    name: str
    op_type: str  # the format's own op name: "Conv", "CONV_2D", "Linear", ...
    macs: int  # multiply-accumulates; 0 for operators without a weight
    bytes: int  # input + output tensor bytes (weights included)
    params: int  # stored weight / bias elements this operator consumes
    dtype: str  # compute dtype: "fp32" or "int8"
    out_channels: int = 0  # MAC ops: output channels / features (the SIMD lane axis of CPU kernels)
    in_channels: int = 0  # MAC ops: reduction channels per group (Cin / groups, or K of a matmul)
    graph_input: bool = False  # MAC ops: reads the network input directly (its channels are not blocked)

    @property
    def weight_layer(self) -> bool:
        """True for the operators a profile's per-op overhead is charged to."""
        return self.macs > 0


def op_class(op: OpCost) -> str:
    """The latency class of an operator: "conv", "fc" or "other" (no MACs).

    Depthwise convolutions are "conv" with one reduction channel: their cost is carried
    by the per-window term of the calibrated model (one window per output element).
    """
    if op.macs <= 0:
        return "other"
    if op.op_type in FC_OP_TYPES:
        return "fc"
    return "conv"
