"""xqueue_grader."""
