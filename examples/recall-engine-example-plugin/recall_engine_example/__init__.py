"""Example recall-engine plugin."""
