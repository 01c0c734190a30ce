"""The daemon's I/O: peer transport, blob HTTP, admin HTTP, DNS discovery, metrics and configuration.

This is the only package (with the simulator) that touches sockets, threads and the real clock; it
turns bytes into typed messages, feeds them to the pure cores and carries out the effects they return.
"""
