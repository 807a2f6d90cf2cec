"""Stage 5, evaluate: metrics, calibration, noise robustness, complexity and the report.

Deliberately empty of imports: config.py reads `mmfuse.evaluation.params` for every CLI
command, and that must not pay for importing torch, scikit-learn or matplotlib.
"""
