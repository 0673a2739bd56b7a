# cython: language_level=3
"""The Python face of one C ISA unit: its kernel table as a capsule. setup.py compiles a copy
of this file per C unit of isa_list.py (module _isa_<name>), together with the unit's source
and with its flags, defining GR_UNIT_TABLE as the unit's table (gr_isa_<name>)."""
from cpython.pycapsule cimport PyCapsule_New

from guanaco_rt._kernels._isa cimport isa_kernels_t, ISA_CAPSULE

cdef extern from "isa_unit.h" nogil:
    const isa_kernels_t unit_table "GR_UNIT_TABLE"

ISA = unit_table.name.decode()


def kernel_table():
    """This unit's kernel table, as a capsule for guanaco_rt._kernels._engine.KernelSet."""
    return PyCapsule_New(<void*>&unit_table, ISA_CAPSULE, NULL)
