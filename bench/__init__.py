"""fedsynth performance bench: figures as ratios against baselines measured in the same run.

Run from the repository root with ``.venv/bin/python -m bench`` (see ``bench/RESULTS.md``). Not part of the
test suite: it times things, and timings are never asserted.
"""
