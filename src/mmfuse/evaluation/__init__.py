"""Evaluation: metrics, the any-subset check, calibration, noise robustness, complexity and the report."""
