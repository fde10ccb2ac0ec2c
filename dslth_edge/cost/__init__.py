"""The one cost model: what a layer, an operator and a model cost on a device.

Owned here and imported one-way by ``device`` (plans), ``profiler`` (verdicts) and
``exporters`` (budgets): layer descriptions, MAC counting, bytes per value, the
residual-group analysis, and the latency predictor with its calibration. This room
imports nothing of the project but ``errors`` (and ``util``).
"""

__all__: list[str] = []
