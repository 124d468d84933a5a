"""Unit tests of the operator's pure functions (no cluster, no network)."""
