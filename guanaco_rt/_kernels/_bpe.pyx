# cython: language_level=3
"""The byte-level BPE merge loop in C: O(n log n) in the length of one pre-token.

Owns: the merge table (a pair of symbols -> the merge's rank and the merged symbol,
an open-addressing hash table) and the loop that applies merges to one pre-token.
Does not know about text: bpe.py turns strings into symbol ids (every string a merge
names, and the 256 byte-level characters, gets one) and the merged symbols back into
token ids.

The loop is llama.cpp's and HF tokenizers': the symbols form a linked list, every
adjacent pair that has a merge sits in a min-heap keyed by (rank, position of its left
symbol), and the loop pops the best pair, merges it and pushes the two new pairs it
made. An entry goes stale when either of its symbols changed since it was pushed; it
is recognised on pop (the pair at that position no longer has that rank: a rank names
one pair, and a symbol only grows, so a changed pair never has the old rank) and
dropped. Popping (rank, position) gives the same merge order as the plain loop
"merge the lowest-ranked pair, the leftmost of equals" (tests/reference.py).
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import numpy as np

cdef uint64_t EMPTY = <uint64_t>-1        # a free slot (symbol ids are < 2**31, so no key is this)


cdef inline uint64_t _key(int32_t a, int32_t b) noexcept nogil:
    return (<uint64_t><uint32_t>a << 32) | <uint32_t>b


cdef inline uint64_t _hash(uint64_t k) noexcept nogil:
    # splitmix64's finaliser: the low bits depend on every bit of both symbols
    k ^= k >> 30
    k *= 0xBF58476D1CE4E5B9ULL
    k ^= k >> 27
    k *= 0x94D049BB133111EBULL
    k ^= k >> 31
    return k


# ---- the heap of candidate pairs: int64 keys rank << 32 | left position, smallest first --
cdef inline void _push(int64_t* h, int64_t* n, int64_t v) noexcept nogil:
    cdef int64_t i = n[0], p
    n[0] += 1
    while i > 0:
        p = (i - 1) >> 1
        if h[p] <= v:
            break
        h[i] = h[p]
        i = p
    h[i] = v


cdef inline int64_t _pop(int64_t* h, int64_t* n) noexcept nogil:
    cdef int64_t top = h[0], last, i = 0, c
    n[0] -= 1
    last = h[n[0]]
    while True:
        c = 2 * i + 1
        if c >= n[0]:
            break
        if c + 1 < n[0] and h[c + 1] < h[c]:
            c += 1
        if last <= h[c]:
            break
        h[i] = h[c]
        i = c
    h[i] = last
    return top


cdef class MergeTable:
    """(left symbol, right symbol) -> (rank, merged symbol) for every merge; the first
    of two merges of the same pair wins, as in a rank dict built with setdefault."""

    cdef uint64_t[::1] keys           # (cap,) _key(left, right), EMPTY where free
    cdef int32_t[::1] ranks           # (cap,) the merge's rank: its index in the merges list
    cdef int32_t[::1] merged          # (cap,) the symbol the merge makes
    cdef uint64_t mask                # cap - 1 (cap a power of two, at least twice the merges)
    cdef readonly int32_t n_symbols   # symbol ids are 0..n_symbols-1

    def __cinit__(self, const int32_t[::1] left, const int32_t[::1] right, const int32_t[::1] merged,
                  int32_t n_symbols):
        cdef Py_ssize_t n = left.shape[0], i
        cdef uint64_t cap = 16, k, s
        if right.shape[0] != n or merged.shape[0] != n:
            raise ValueError("left, right and merged must have the same length")
        if n >= (1 << 30):
            raise ValueError(f"{n} merges: at most 2**30")
        for i in range(n):
            if not (0 <= left[i] < n_symbols and 0 <= right[i] < n_symbols and 0 <= merged[i] < n_symbols):
                raise ValueError(f"merge {i}: symbol ids must be in [0, {n_symbols})")
        while cap < 2 * <uint64_t>n:
            cap <<= 1
        self.keys = np.full(cap, EMPTY, np.uint64)
        self.ranks = np.zeros(cap, np.int32)
        self.merged = np.zeros(cap, np.int32)
        self.mask = cap - 1
        self.n_symbols = n_symbols
        for i in range(n):
            k = _key(left[i], right[i])
            s = _hash(k) & self.mask
            while self.keys[s] != EMPTY and self.keys[s] != k:
                s = (s + 1) & self.mask
            if self.keys[s] == EMPTY:
                self.keys[s] = k
                self.ranks[s] = <int32_t>i
                self.merged[s] = merged[i]

    cdef inline int64_t _find(self, int32_t a, int32_t b) noexcept nogil:
        # the slot of the pair (a, b), or -1
        cdef uint64_t k = _key(a, b), s = _hash(k) & self.mask
        while self.keys[s] != EMPTY:
            if self.keys[s] == k:
                return <int64_t>s
            s = (s + 1) & self.mask
        return -1

    cdef void _try_pair(self, const int32_t* sym, int32_t left, int32_t right, int64_t* heap,
                        int64_t* n_heap) noexcept nogil:
        cdef int64_t s
        if left < 0 or right < 0:
            return
        s = self._find(sym[left], sym[right])
        if s >= 0:
            _push(heap, n_heap, (<int64_t>self.ranks[s] << 32) | left)

    def merge(self, const int32_t[::1] symbols):
        """One pre-token's symbols (int32, each < n_symbols) -> the symbols left after every
        merge that applies, in order (an int32 array)."""
        cdef Py_ssize_t n = symbols.shape[0], i
        cdef int32_t left, right, nxt
        cdef int64_t top, s, n_heap = 0, n_out = 0
        cdef int32_t* sym
        cdef int32_t* prv
        cdef int32_t* nx
        cdef int64_t* heap
        if n >= (1 << 31) - 1:
            raise ValueError(f"a pre-token of {n} symbols: at most 2**31 - 2")
        for i in range(n):
            if not 0 <= symbols[i] < self.n_symbols:
                raise ValueError(f"symbol {symbols[i]} outside [0, {self.n_symbols})")
        out = np.empty(n, np.int32)
        cdef int32_t[::1] o = out
        if n == 0:
            return out
        # sym (n,): the symbol at each position, -1 once merged into its left neighbour;
        # prv, nx (n,): the linked list; heap (3n,): n - 1 first pairs + 2 per merge (< n merges)
        sym = <int32_t*>malloc(n * sizeof(int32_t))
        prv = <int32_t*>malloc(n * sizeof(int32_t))
        nx = <int32_t*>malloc(n * sizeof(int32_t))
        heap = <int64_t*>malloc(3 * n * sizeof(int64_t))
        if sym == NULL or prv == NULL or nx == NULL or heap == NULL:
            free(sym)
            free(prv)
            free(nx)
            free(heap)
            raise MemoryError(f"BPE merge of a pre-token of {n} symbols")
        with nogil:
            for i in range(n):
                sym[i] = symbols[i]
                prv[i] = <int32_t>i - 1
                nx[i] = <int32_t>i + 1 if i + 1 < n else -1
            for i in range(n - 1):
                self._try_pair(sym, <int32_t>i, <int32_t>(i + 1), heap, &n_heap)
            while n_heap > 0:
                top = _pop(heap, &n_heap)
                left = <int32_t>(top & <int64_t>0x7FFFFFFF)     # positions are < 2**31
                right = nx[left]
                if sym[left] < 0 or right < 0:
                    continue                        # stale: left was merged away, or is last now
                s = self._find(sym[left], sym[right])
                if s < 0 or self.ranks[s] != <int32_t>(top >> 32):
                    continue                        # stale: the pair here changed since the push
                sym[left] = self.merged[s]
                sym[right] = -1
                nxt = nx[right]
                nx[left] = nxt
                if nxt >= 0:
                    prv[nxt] = left
                self._try_pair(sym, prv[left], left, heap, &n_heap)
                self._try_pair(sym, left, nxt, heap, &n_heap)
            left = 0                                # position 0 is never merged away
            while left >= 0:
                o[n_out] = sym[left]
                n_out += 1
                left = nx[left]
        free(sym)
        free(prv)
        free(nx)
        free(heap)
        return out[:n_out]
