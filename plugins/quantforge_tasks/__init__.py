"""Task evaluators (work in progress for issue 8): tool calling, exact match, lm-eval bridge.

Not registered yet: the scoring core and the synthetic corpus come first.
"""
