"""Deterministic discrete-event simulation of the consensus cores, and the local cluster launcher.

One seed draws everything -- the regions of the replicas, the workload, the network's latencies,
losses, duplicates, reorderings and partitions, crashes and restarts, and the Byzantine behaviours --
so any failing schedule replays exactly from its seed (``moe-swarm simulate --seed X --trace``).
"""
