"""``python -m sim``: the deterministic simulator's command line (see :mod:`sim.simulator`)."""

import sys

from sim.simulator import main

sys.exit(main())
