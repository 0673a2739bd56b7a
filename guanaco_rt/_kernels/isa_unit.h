/* The one symbol a C ISA unit exports, as the shim _isa_unit.pyx sees it: setup.py defines
 * GR_UNIT_TABLE as the unit's table, gr_isa_<name> (isa_list.py). */
#ifndef GUANACO_RT_ISA_UNIT_H
#define GUANACO_RT_ISA_UNIT_H
#include "isa_table.h"
extern const isa_kernels_t GR_UNIT_TABLE;
#endif
