"""Experimental K-SAM variants: built on the trainer's hooks, not recommended, may change or go.

Importing this package warns once. Each variant documents what it measured in `docs/`.
"""

import warnings

warnings.warn("ksam_hf.experimental holds experimental K-SAM variants: their behaviour may change "
              "between releases, and none is recommended for accuracy (see docs/).", FutureWarning, stacklevel=2)
