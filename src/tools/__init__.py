"""Command-line tools built on the models and engine."""
