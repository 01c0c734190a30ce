"""moe-swarm: a peer-to-peer swarm of identical nodes that trains a Mixture-of-Experts model."""

__version__ = "0.1.0"
