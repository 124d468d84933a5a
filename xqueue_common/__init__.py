"""Shared by the server, the operator and the grader: typed settings (settings.py) and the JSON log shape
(jsonlog.py). Standard library only: every image carries this package next to its own."""
