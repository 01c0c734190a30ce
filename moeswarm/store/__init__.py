"""A node's durable state: content-addressed chunks, checkpoints, the consensus log, and export.

Importing this package does not import torch: the consensus log and the chunk store are used by
processes (and commands) that never touch tensors.
"""
