"""Encoders, fusion heads, the any-subset classifier (classifier.py) and its artifact format."""
