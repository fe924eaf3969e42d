"""What several commands share: flags that mean the same thing wherever they appear."""

from __future__ import annotations

import argparse

from quantforge.model.calibration import CalibrationSpec


def calibration_from_args(args: argparse.Namespace) -> CalibrationSpec | None:
    """The ``--calibration*`` flags of ``quantize`` and ``search`` as a spec (or ``None``)."""
    if args.calibration is None:
        return None
    return CalibrationSpec(
        source=args.calibration,
        samples=args.calibration_samples,
        seq_len=args.calibration_seq_len,
        column=args.calibration_column,
        split=args.calibration_split,
    )
