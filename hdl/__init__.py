"""Amaranth components of the inference datapath. See docs/architecture.md."""
