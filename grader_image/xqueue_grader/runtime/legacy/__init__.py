"""Import names expected by legacy course graders (``gradelib``, ``grader_support``).

This directory (not the package) is prepended to ``sys.path`` inside the sandbox, which makes its
modules importable under their historical top-level names without shipping new top-level
packages.  It is a package only so that packaging tools include its files.
"""
