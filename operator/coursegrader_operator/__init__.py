"""coursegrader_operator."""
