"""The round protocol: train, publish deltas, commit through PBFT, aggregate deterministically.

Pure pieces (`round`, `aggregate`, `apply`, `outer`, `messages`) and the tensor engine (`engine`); the
daemon in `moeswarm.node` does the I/O.
"""

# How a deliberately Byzantine node corrupts its deltas (tests and `moe-swarm up --byzantine`).
POISON_MODES = ("scale", "flip", "nan")
