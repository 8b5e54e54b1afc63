"""Simulated external systems for testing jobctl without the real thing.

``jobctl_simulators.qemu`` is a QEMU 7.2 that speaks QMP: see its package docstring.
"""
