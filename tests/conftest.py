import os
import sys

# OpenMP threads that spin while waiting are 5-20x slower on a shared 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))      # this checkout's lidlib, before any installed copy
sys.path.insert(0, HERE)                       # tests/reference.py
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
