"""Tools beside the course: benchmarks that print tables, the GPU check, comparisons and
experiment scripts. Run them from the repository root, e.g. `python -m tools.bench augment`."""
