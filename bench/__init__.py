"""Benchmarks (`make bench`): each module writes JSON under build/bench/."""

import json

__all__ = ["write_json"]


def write_json(name, data):
    """Write ``data`` to build/bench/<name>.json (numpy scalars as floats), say so, return the path."""
    from sim.runner import BUILD
    path = BUILD / "bench" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path
