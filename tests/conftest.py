import os

# One thread per test process: the suite runs on 2 cores and torch would oversubscribe them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
