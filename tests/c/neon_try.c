/* The NEON unit's three tables as capsules (the form _engine.KernelSet takes), so that
 * tests/c/arm_demo.py can run the unit inside the engine before setup.py and dispatch build
 * and pick it. Built only by tests/c/run_arm_python.sh; never part of the package. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include "isa_table.h"
extern const isa_kernels_t gr_isa_neon, gr_isa_neon_dotprod, gr_isa_neon_i8mm;
int gr_neon_cpu_has_dotprod(void);
int gr_neon_cpu_has_i8mm(void);
static PyObject *table(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    const isa_kernels_t *t = !strcmp(name, "neon") ? &gr_isa_neon : !strcmp(name, "neon_dotprod") ? &gr_isa_neon_dotprod : &gr_isa_neon_i8mm;
    return PyCapsule_New((void *)t, GR_ISA_CAPSULE, NULL);
}
static PyObject *best(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(gr_neon_cpu_has_i8mm() ? "neon_i8mm" : gr_neon_cpu_has_dotprod() ? "neon_dotprod" : "neon");
}
static PyMethodDef M[] = {{"kernel_table", table, METH_O, ""}, {"best", best, METH_NOARGS, ""}, {NULL}};
static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "_neon_try", NULL, -1, M};
PyMODINIT_FUNC PyInit__neon_try(void) { return PyModule_Create(&D); }
