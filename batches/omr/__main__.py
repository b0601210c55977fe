import os
import sys

# The engine's linear algebra is on 3 x 3 matrices: BLAS worker threads would
# only spin up with the process and take CPU time from the reading. (Set before
# numpy is first imported; a value already in the environment wins.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli import main  # noqa: E402

sys.exit(main())
