# cython: language_level=3
"""The SIGBUS guard of a model file's mapping (mapguard.h), seen from Python.

GuardedBuffer wraps a read-only buffer (the model's mmap), registers its address range
with the guard for as long as it lives, and exports the same bytes (read-only), so the
arrays built on it keep the registration alive exactly as long as they keep the mapping
alive. ``faulted`` says whether a read of it hit a page the file no longer has (the file
shrank under the mapping); those pages now read as zeros.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_SIMPLE


cdef extern from "mapguard.h" nogil:
    int grt_guard_install()
    int grt_guard_register(const void *base, size_t length)
    void grt_guard_unregister(int slot)
    int grt_guard_faulted(int slot)
    const int *grt_guard_flag(int slot)


cdef class GuardedBuffer:
    """A read-only buffer over ``obj`` whose SIGBUS faults turn into zero pages and a flag."""

    cdef const int* fault_flag(self) noexcept:
        # the flag the handler sets, for the forward pass to poll (NULL: not guarded); valid
        # for as long as this object lives
        return grt_guard_flag(self.slot)

    def __cinit__(self, obj):
        self.slot = -1
        self.has_view = False
        PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        cdef int err = grt_guard_install()
        if err != 0:
            raise OSError(err, "guanaco_rt: cannot install the SIGBUS handler")
        if self.view.len > 0:
            self.slot = grt_guard_register(self.view.buf, <size_t>self.view.len)

    @property
    def guarded(self):
        """False when the registry was full: this mapping then dies on SIGBUS as before."""
        return self.slot >= 0

    @property
    def faulted(self):
        """True once a read of this mapping found its file shorter than when it was mapped."""
        return grt_guard_faulted(self.slot) != 0

    def __len__(self):
        return self.view.len

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.view.buf, self.view.len, 1, flags)

    def __dealloc__(self):
        # nothing reads the mapping any more (every export of it is gone): forget the range
        # before the mapping can be unmapped and its addresses reused
        grt_guard_unregister(self.slot)
        self.slot = -1
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
