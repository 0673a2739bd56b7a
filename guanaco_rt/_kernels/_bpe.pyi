import numpy as np
import numpy.typing as npt
from typing_extensions import Self, disjoint_base

@disjoint_base
class MergeTable:
    n_symbols: int
    def __new__(cls, left: npt.NDArray[np.int32], right: npt.NDArray[np.int32], merged: npt.NDArray[np.int32],
                n_symbols: int) -> Self: ...
    def merge(self, symbols: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]: ...
