# _ops has no Python-visible names: its functions are cdef, cimported by _engine and _twins.
