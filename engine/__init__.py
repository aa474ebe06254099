"""The batched DeepDream engine: models, truncation, objectives, the octave-ascent loop, images in and out.

Imports nothing from ``export``, ``cluster`` or ``benchmarks``.
"""
