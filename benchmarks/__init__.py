"""dreamfleet benchmarks: images/s against the seed article's implementation and the device's FLOP limit.

``dreamfleet bench`` / ``python -m dreamfleet.benchmarks``; see ``benchmarks/run.py``.
"""
