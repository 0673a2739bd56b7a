# The thread governor has no Python API: the engine cimports it (_governor.pxd), and the
# twins in _twins.pyx feed its decisions made-up figures for tests.
