"""Learning: masked layers, the straight-through top-k, seeded fixed weights, the model
zoo, the MCE-PL update rules (paper eqs. 1-5) and dense-vector helpers for baselines.

May import: errors only (and torch/numpy). Everything above it builds on this room.
"""
