"""Policies: the ``VLAPolicy`` interface, action tokenization, a tiny local VLA, HF wrappers."""
