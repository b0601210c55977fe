"""The batch pipeline: the stages a batch runs through, from its stored upload
to its results CSV, run by Dramatiq workers (docs/architecture.md)."""
