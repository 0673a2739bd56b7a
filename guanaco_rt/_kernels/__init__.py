"""Cython kernels, one extension module per ISA; see dispatch.py for the choice."""
