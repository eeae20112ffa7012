"""Offline work: building channel artifacts, the demo catalogue, and data loaders."""
