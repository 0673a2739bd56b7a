import numpy as np
import numpy.typing as npt

class MergeTable:
    n_symbols: int
    def __init__(self, left: npt.NDArray[np.int32], right: npt.NDArray[np.int32], merged: npt.NDArray[np.int32],
                 n_symbols: int) -> None: ...
    def merge(self, symbols: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]: ...
