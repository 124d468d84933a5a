"""Code that runs inside the sandbox: our gradelib implementation and the harness.

``legacy/`` is put on the sandboxed interpreter's ``sys.path`` so that course graders written for
xqueue-watcher can keep doing ``import gradelib`` or ``from grader_support import gradelib``.
"""
