"""The model and its inputs: where a base model comes from, what is checked before it is
trusted, the artifact folders steps write, calibration and evaluation texts, per-layer
precision overrides, imported checkpoints and GGUF bases.

May import: the plugin API and :mod:`quantforge.plugins`.
"""
