"""Reviewers' work on finished batches: corrections, marking sheets
reviewed, reading a sheet again, and the overlays that show what the reader
saw (docs/architecture.md)."""
