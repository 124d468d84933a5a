"""xqueue_grader: an xqueue-watcher compatible pull grader with an unprivileged sandbox.

Entry points: ``xqueue-grader`` (``__main__``), ``daemon.GraderDaemon``, ``engine.GradingEngine``,
``sandbox.SandboxPool``, ``launch`` (start from other code), ``library`` (custom handlers).
"""

__version__ = "0.1.0"
