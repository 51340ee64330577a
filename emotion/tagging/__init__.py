"""Tagging without Ray: inputs, output units and resume, the output lock, the report.

``emotion.pipelines.tagging`` wires these into Ray Data; nothing here imports Ray or
Hydra, so the driver's bookkeeping is tested and reused without a cluster.
"""
