"""MinHash signatures and an LSH index for near-duplicate text, shared by the chunk stage (near-
duplicate chunks, within a run and against earlier runs) and publish (near-duplicate examples).

Texts are compared as sets of *shingles*: word 5-grams of the lower-cased text, where a word is a
run of ASCII letters and digits or of non-ASCII characters (so punctuation and spacing do not
matter). A text of fewer than 5 words is one shingle. The estimated Jaccard similarity of two texts
is the share of equal values in their MinHash signatures (NUM_PERM of them).

Speed: a batch of texts is shingled with numpy over its UTF-8 bytes (word hashes by polynomial
prefix sums, 64-bit wrap-around), and the signatures come from rensa's Rust MinHash
(`RMinHash.digest_matrix_from_flat_token_hashes`): no Python object per shingle or per word.

The index (`NearDupIndex`) holds the signatures (NUM_PERM x 4 bytes each) and, for LSH, one 64-bit
key per band and signature in sorted numpy runs (merged like an LSM tree): about 720 bytes per
indexed text with the defaults, never the texts. Candidates that share a band are verified on the
signatures, so a reported near-duplicate always has an estimated similarity >= the threshold.

Known limit: text without spaces (Chinese, Japanese, Thai) has few "words", so it is compared in
coarse pieces: such texts are found as near-duplicates only when they are (almost) identical.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from functools import cache

import numpy as np

NUM_PERM = 128  # MinHash values per signature (estimate's standard error at J=0.8: about 0.035)
NGRAM = 5  # words per shingle
SEED = 0x5EED  # rensa's permutation seed: signatures are comparable only under the same seed
SIGNATURE_BYTES = NUM_PERM * 4
BATCH_BYTES = 1 << 20  # text bytes shingled per numpy pass (bounds the temporary arrays: ~40 x this)

_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2**64
_Q = np.uint64(0x9E3779B97F4A7C15)  # combines word hashes into a shingle hash
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[ord("0"):ord("9") + 1] = _WORD_BYTES[ord("a"):ord("z") + 1] = _WORD_BYTES[0x80:] = True
_WORD_TABLE = _WORD_BYTES.astype(np.uint8).tobytes()  # for bytes.translate: 1 for a word byte, else 0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the 64 output bits (wraps mod 2**64).
    Works in place on `x` (uint64) and returns it."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@cache
def _inverse(p: int) -> int:
    return pow(p, -1, 1 << 64)


@dataclass(frozen=True)
class Shingles:
    """The shingle hashes of a batch of texts: text i owns hashes[offsets[i]:offsets[i + 1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len(texts) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray | list[int]) -> Shingles:
        """The shingles of the texts `rows` (indices, in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        starts = np.repeat(self.offsets[:-1][rows] - offsets[:-1], counts)
        return Shingles(self.hashes[np.arange(offsets[-1], dtype=np.int64) + starts], offsets)

    def duplicate_share(self) -> np.ndarray:
        """Per text: the share of its shingles that repeat an earlier shingle of the same text."""
        counts = self.counts()
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        if not len(owner):
            return np.zeros(len(counts))
        # One sort of (text, hash) packed in 64 bits: the text's index above 40 bits of the hash (a
        # false repeat needs two of a text's few hundred shingles to agree on 40 bits: negligible).
        key = np.sort((owner.astype(np.uint64) << np.uint64(40)) | (self.hashes >> np.uint64(24)))
        repeat = key[1:] == key[:-1]
        repeats = np.bincount((key[1:][repeat] >> np.uint64(40)).astype(np.int64), minlength=len(counts))
        return repeats / np.maximum(counts, 1)


def shingles(texts: list[str], ngram: int = NGRAM) -> Shingles:
    """Shingle hashes of each text (see the module docstring), in batches of BATCH_BYTES."""
    parts, start, size = [], 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= BATCH_BYTES:
            parts.append(_shingle_batch(texts[start:i + 1], ngram))
            start, size = i + 1, 0
    if start < len(texts) or not parts:
        parts.append(_shingle_batch(texts[start:], ngram))
    if len(parts) == 1:
        return parts[0]
    offsets = [parts[0].offsets]
    for part in parts[1:]:
        offsets.append(part.offsets[1:] + offsets[-1][-1])
    return Shingles(np.concatenate([p.hashes for p in parts]), np.concatenate(offsets))


def _shingle_batch(texts: list[str], ngram: int) -> Shingles:
    n = len(texts)
    # Lower-cased like str.lower(): bytes.lower() does it for ASCII; str.lower() for the other texts
    # (then bytes.lower() changes nothing: str.lower() leaves no ASCII capital).
    encoded = [t.encode("utf-8", "surrogatepass") if t.isascii() else t.lower().encode("utf-8", "surrogatepass")
               for t in texts]
    blob = (b"\n" + b"\n".join(encoded) + b"\n").lower()  # a non-word byte before and after each text
    data = np.frombuffer(blob, dtype=np.uint8)
    # Word bytes (a table lookup by bytes.translate), then words: their edges alternate start, end.
    is_word = np.frombuffer(blob.translate(_WORD_TABLE), dtype=np.bool_)
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    # Word hash = sum(b_j * P**(end-1-j)) = P**(end-1) * (C[end-1] - C[start-1]), C[k] = sum_{j<=k} b_j * P**-j.
    powers = _powers(len(data))
    with np.errstate(over="ignore"):
        c = np.multiply(data, powers[1, : len(data)], dtype=np.uint64)
        np.cumsum(c, out=c)
        words = c[ends - 1]
        words -= c[starts - 1]
        words *= powers[0][ends - 1]
    _mix(words)
    # The words of each text: those starting between its first byte and the next text's.
    text_starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, count=n) + 1, out=text_starts[1:])
    word_offsets = np.searchsorted(starts, text_starts)
    return _ngrams(words, np.diff(word_offsets), ngram)


_POWERS = np.ones((2, 1), dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """[P**k, P**-k] for k < n (at least), modulo 2**64: computed once, grown by doubling."""
    global _POWERS
    if _POWERS.shape[1] < n:
        size = max(n, 2 * _POWERS.shape[1], 1 << 16)
        powers = np.empty((2, size), dtype=np.uint64)
        powers[0], powers[1] = _P, np.uint64(_inverse(int(_P)))
        powers[:, 0] = 1
        with np.errstate(over="ignore"):
            np.cumprod(powers, axis=1, dtype=np.uint64, out=powers)
        _POWERS = powers
    return _POWERS


def _ngrams(words: np.ndarray, word_counts: np.ndarray, ngram: int) -> Shingles:
    """Shingle hashes from word hashes: each window of `ngram` words of one text; a shorter text
    is one shingle of all its words."""
    n = len(word_counts)
    word_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(word_counts, out=word_offsets[1:])
    long = word_counts >= ngram
    counts = np.where(long, word_counts - ngram + 1, np.minimum(word_counts, 1))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.empty(offsets[-1], dtype=np.uint64)
    short = np.flatnonzero((word_counts > 0) & ~long)
    with np.errstate(over="ignore"):
        if long.any():
            # Windows over all the words at once, then those that stay within one text: a window
            # starting in the last ngram - 1 words of a text (any word of a short text) does not.
            m = len(words) - ngram + 1
            acc = words[:m].copy()
            for k in range(1, ngram):
                acc *= _Q
                acc += words[k: m + k]
            _mix(acc)
            tails = word_offsets[1:, None] - np.arange(1, ngram)
            tails = tails[(tails >= word_offsets[:-1, None]) & (tails < m)]
            inside = np.ones(m, dtype=bool)
            inside[tails] = False
            if len(short):
                slots = np.ones(len(out), dtype=bool)
                slots[offsets[short]] = False
                out[slots] = acc[inside]
            else:
                out[:] = acc[inside]
        for i in short:  # a short text: one shingle of its words
            shingle = np.uint64(word_counts[i])
            for w in words[word_offsets[i]:word_offsets[i + 1]]:
                shingle = shingle * _Q + w
            out[offsets[i]] = _mix(np.array([shingle], dtype=np.uint64))[0]
    return Shingles(out, offsets)


SIGNATURE_BATCH = 2_048  # texts whose signatures rensa returns at once (as Python lists: about 4.6 KB a text)


def signatures(shingled: Shingles) -> np.ndarray:
    """MinHash signatures (uint32, one row of NUM_PERM per text). A text without words gets a row
    of 0xFFFFFFFF (rensa's empty set): compare only texts that have words."""
    import rensa

    out = np.zeros((len(shingled), NUM_PERM), dtype=np.uint32)
    for start in range(0, len(shingled), SIGNATURE_BATCH):
        stop = min(start + SIGNATURE_BATCH, len(shingled))
        lo, hi = shingled.offsets[start], shingled.offsets[stop]
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            shingled.hashes[lo:hi], (shingled.offsets[start:stop + 1] - lo).astype(np.uint64), NUM_PERM, SEED)
        rows = matrix.to_rows()  # lists of ints: packed row by row (faster than numpy's conversion of nested lists)
        if array("I").itemsize == 4:
            out[start:stop] = np.frombuffer(b"".join(array("I", row).tobytes() for row in rows),
                                            dtype=np.uint32).reshape(stop - start, NUM_PERM)
        else:
            out[start:stop] = np.asarray(rows, dtype=np.uint32).reshape(stop - start, NUM_PERM)
    return out


def text_signatures(texts: list[str]) -> np.ndarray:
    return signatures(shingles(texts))


RECALL_AT_THRESHOLD = 0.97  # LSH makes a pair at exactly the threshold a candidate with at least this probability


@cache
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band): the fewest bands (so the fewest candidates below the threshold, and
    the least memory) such that a pair at the threshold shares a band with probability >=
    RECALL_AT_THRESHOLD under the S-curve 1 - (1 - s**rows)**bands. Candidates are verified on the
    signatures, so a lower band count would only lose near-duplicates, not add false ones."""
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if 1 - (1 - threshold**rows) ** bands >= RECALL_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1


BAND_BATCH = 65_536  # signatures whose band keys are computed at once (bounds the uint64 copy of their values)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (shape: len(sigs) x bands); keys of different bands never collide by design."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    seeds = np.arange(1, bands + 1, dtype=np.uint64) * _Q
    for start in range(0, len(sigs), BAND_BATCH):
        values = sigs[start:start + BAND_BATCH, : bands * rows].astype(np.uint64).reshape(-1, bands, rows)
        acc = np.repeat(seeds[None, :], len(values), axis=0)
        with np.errstate(over="ignore"):
            for col in range(rows):  # every band at once
                acc *= _P
                acc += values[:, :, col]
        keys[start:start + len(values)] = _mix(acc)
    return keys


class _BandRuns:
    """Band key -> ids, as sorted numpy runs merged when a newer run grows as large as the one
    before (an LSM tree): appending is amortized O(log n) per key, a lookup is a binary search per run."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys uint64, ids uint32)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        flat_keys = keys.ravel()
        flat_ids = np.repeat(ids.astype(np.uint32), keys.shape[1])
        order = np.argsort(flat_keys, kind="stable")
        self.runs.append((flat_keys[order], flat_ids[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k1, i1), (k2, i2) = self.runs[-2], self.runs[-1]
            k, i = np.concatenate([k1, k2]), np.concatenate([i1, i2])
            order = np.argsort(k, kind="stable")
            self.runs[-2:] = [(k[order], i[order])]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, id) for every id that shares a band key with query row (may repeat)."""
        # Sorted queries: each binary search starts where the one before ended (and stays in cache).
        order = np.argsort(keys.ravel())
        flat = keys.ravel()[order]
        rows_out, ids_out = [], []
        for run_keys, run_ids in self.runs:
            lo = np.searchsorted(run_keys, flat, side="left")
            hi = np.searchsorted(run_keys, flat, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            rank = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            rows_out.append(np.repeat(order // keys.shape[1], counts))
            ids_out.append(run_ids[np.repeat(lo, counts) + rank])
        if not rows_out:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows_out), np.concatenate(ids_out).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + i.nbytes for k, i in self.runs)


class NearDupIndex:
    """Signatures with ids 0, 1, 2, ... (in the order added) and their LSH bands."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        self.threshold = threshold
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._sigs = np.zeros((0, num_perm), dtype=np.uint32)
        self._size = 0
        self._runs = _BandRuns()

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return self._sigs.nbytes + self._runs.nbytes

    def signature(self, ids: np.ndarray) -> np.ndarray:
        return self._sigs[ids]

    def add(self, sigs: np.ndarray) -> np.ndarray:
        """Index `sigs`; returns their ids."""
        if self._size + len(sigs) > len(self._sigs):  # grow by half: amortized O(1) per signature
            grown = np.zeros((max(1024, (self._size + len(sigs)) * 3 // 2), self._sigs.shape[1]), dtype=np.uint32)
            grown[: self._size] = self._sigs[: self._size]
            self._sigs = grown
        ids = np.arange(self._size, self._size + len(sigs), dtype=np.int64)
        self._sigs[ids] = sigs
        self._size += len(sigs)
        self._runs.add(band_keys(sigs, self.bands, self.rows), ids)
        return ids

    def matches(self, sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, id, estimated similarity) of every indexed signature at or over the
        threshold, sorted by query row then id, each pair once."""
        rows, ids = self._runs.lookup(band_keys(sigs, self.bands, self.rows))
        if len(rows):
            pairs = np.unique(rows * (self._size + 1) + ids)
            rows, ids = pairs // (self._size + 1), pairs % (self._size + 1)
            similarity = similarities(sigs[rows], self._sigs[ids])
            keep = similarity >= self.threshold
            return rows[keep], ids[keep], similarity[keep]
        return rows, ids, np.zeros(0)

    def first_match(self, sigs: np.ndarray) -> np.ndarray:
        """Per query row: the smallest id at or over the threshold, or -1."""
        rows, ids, _ = self.matches(sigs)
        first = np.full(len(sigs), -1, dtype=np.int64)
        if len(rows):
            # rows are sorted, ids ascending within a row: the first pair of each row has the smallest id
            head = np.ones(len(rows), dtype=bool)
            head[1:] = rows[1:] != rows[:-1]
            first[rows[head]] = ids[head]
        return first


def similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows a[i] and b[i]."""
    return (a == b).mean(axis=1) if len(a) else np.zeros(0)
