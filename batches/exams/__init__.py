"""Exams on the server: answer keys and rules, rosters, scores, the batch
report and the results downloads. The scoring itself is the pure package
``batches.scoring``; this package stores what it returns and calls it."""
