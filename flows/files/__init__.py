"""File helpers that money/ and media/ (and the rooms above them) share: atomic writes and
file digests. The bottom room of flows/: it imports nothing from the others."""
