"""Exam scoring: answer keys and rules (``rules``), scoring many sheets at once
(``scoring``), item analysis (``items``) and OMRChecker ``evaluation.json``
import (``evaluation``).

Plain Python and numpy only, like the engine: the server stores what these
modules return and calls them; nothing here knows about the database.
"""
