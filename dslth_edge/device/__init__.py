"""The device: hardware profiles (validated TOML), the cost model and the plan.

Owns Profile and its schema, the planner that turns a profile's budgets into keep
ratios, and the keep a node trains with. May import: errors, learn (to measure a zoo
model's layers); nothing from fleet, runs, cli.
"""
