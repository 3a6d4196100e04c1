"""The command line of the evaluation, ``python -m lidlib.experiment`` (see :mod:`lidlib.evaluation`)::

    python -m lidlib.experiment probability-change --methods SIG-LID-IG LayerCAM --images DIR --out results.csv

Its Python API (``run``, ``read_results``, ``verify_sample``, …) lives in :mod:`lidlib.evaluation`; the
names are re-exported here so that ``from lidlib import experiment`` keeps working.
"""
from __future__ import annotations

import sys

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
from .evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
