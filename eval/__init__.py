"""Evaluation suite: pinned protocols, reference-checked metrics, the runner, tables and comparisons (see README.md)."""
