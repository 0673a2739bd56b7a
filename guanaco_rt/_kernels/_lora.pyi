from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Self, disjoint_base

@disjoint_base
class LoraSet:
    n_layer: int
    shape: tuple[int, ...]
    def __new__(cls, shape: tuple[int, ...], entries: list[tuple[int, int, Any, Any, float]],
                tmp_rows: int = ...) -> Self: ...
    def add(self, layer: int, which: int, out: npt.NDArray[np.float32], x: npt.NDArray[np.float32],
            n_threads: int = ...) -> None: ...
