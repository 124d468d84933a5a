"""xqueue_server."""
