from typing import Any

ISA: str

def kernel_table() -> Any: ...
