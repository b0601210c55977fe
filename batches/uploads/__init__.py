"""Receiving a batch: a single upload or a resumable (tus) one, checked and
accepted, then handed to the pipeline (docs/architecture.md)."""
