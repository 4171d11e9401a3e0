"""Command-line entry points of flatprep (argument parsing only; the work is in the library)."""
