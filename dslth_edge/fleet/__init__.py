"""The fleet: the node round loop, the mask exchange, deadlines, topologies, the fleet
plan, the in-process simulator, node processes over MQTT, the live table and summaries.

May import: errors, device, data, learn, runs, wire, transport; never cli or exporters.
"""
