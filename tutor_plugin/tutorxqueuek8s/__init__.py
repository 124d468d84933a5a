"""Tutor plugin for xqueue-k8s (import name of the `tutor-xqueue-k8s` distribution)."""
