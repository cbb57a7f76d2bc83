"""Benchmarks (`make bench`): each module writes JSON under build/bench/."""
