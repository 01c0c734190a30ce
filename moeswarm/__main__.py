"""`python -m moeswarm` is the same as the `moe-swarm` console script."""

import sys

from moeswarm.cli import main

sys.exit(main())
