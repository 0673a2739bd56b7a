from typing import Iterable

import numpy as np
import numpy.typing as npt
from typing_extensions import Self, disjoint_base

@disjoint_base
class SamplerCore:
    n_probs: int
    n_vocab: int
    def __new__(cls, n_vocab: int, bit_generator: np.random.BitGenerator, temperature: float, top_k: int,
                top_p: float, min_p: float, typical_p: float, repetition_penalty: float, repeat_last_n: int,
                 frequency_penalty: float, presence_penalty: float, logit_bias: dict[int, float],
                 n_probs: int, dry_multiplier: float = ..., dry_base: float = ..., dry_allowed_length: int = ...,
                 dry_last_n: int = ..., dry_breakers: Iterable[int] = ...) -> Self: ...
    def set_mask(self, mask: npt.NDArray[np.int32] | npt.NDArray[np.uint32] | None) -> None: ...
    def penalize(self, logits: npt.NDArray[np.float32], hist: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]: ...
    def sample(self, logits: npt.NDArray[np.float32],
               hist: npt.NDArray[np.int32]) -> tuple[int, list[tuple[int, float]] | None]: ...
