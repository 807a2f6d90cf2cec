"""Encoders, fusion heads and the multimodal classifier (see classifier.py for the any-subset design).

Deliberately empty of imports: config.py reads `mmfuse.models.params` for every CLI
command, and that must not pay for importing torch.
"""
