"""Sheets made up for testing the engine, apart from its reading path:
the simulator (``simulate``: filled-in sheets as a scanner or a phone delivers
them, with their truth; ``simfile``: how the file is written), and the scoring
of readings against that truth (``accuracy``). The command line, the tests and
the benchmarks use them; nothing that reads a sheet imports them
(``tests/omr/test_purity.py``)."""
