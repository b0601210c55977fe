import os
import sys

# The engine's linear algebra is on 3 x 3 matrices: BLAS worker threads would
# only spin up with the process and take CPU time from the reading. (Set before
# numpy is first imported; a value already in the environment wins.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli import main  # noqa: E402

# Everything is written once the output is flushed: the interpreter's own
# teardown (freeing numpy's and OpenCV's state module by module) would add
# 30-50 ms to every command, several times a command's reading of a small
# sheet. An error still leaves through SystemExit, the usual way.
try:
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
except BrokenPipeError:  # the reader of the output went away (``| head``): done, quietly
    status = 1
os._exit(status)
