# The SIGBUS guard's buffer, for the engine to poll its flag (see _mapguard.pyx)
from cpython.buffer cimport Py_buffer


cdef class GuardedBuffer:
    cdef Py_buffer view           # of obj: holds it (and so the mapping) alive
    cdef bint has_view
    cdef int slot                 # registry slot, -1: not guarded
    cdef const int* fault_flag(self) noexcept
