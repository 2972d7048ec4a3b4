"""Web-like redundancy for simulated pools: heavy-tailed repeats of each row, each copy perturbed.

Web-scale pools (the paper's Open Images) hold near-duplicates, bursts and
re-uploads; benchmark pools do not. ``make_redundant`` turns a clean pool into
a redundant one so the simulator can show the regime where diversity pays:
each pool row is repeated ``m ~ Zipf(a)`` times (at most ``cap``); the first
occurrence is the row itself, every further copy is perturbed (a small random
shift plus pixel noise for images, Gaussian noise relative to each feature's
spread for vectors). The test split is never touched.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .._validation import BatchalInputError
from .datasets import Dataset

__all__ = ["RedundancySpec", "parse_redundancy", "make_redundant"]


@dataclasses.dataclass(frozen=True)
class RedundancySpec:
    """Parameters of the redundancy model.

    Parameters
    ----------
    a : float, default 2
        Zipf exponent of the multiplicity (> 1; smaller = heavier tail).
    cap : int, default 50
        Largest multiplicity (larger draws are clipped to it).
    noise : float, default 0.05
        Noise standard deviation of a copy, relative to each feature's (pixel's)
        standard deviation over the pool.
    shift : int or None, default None
        Images: each copy is shifted by up to this many pixels in each
        direction. None: 1 for images at least 16 pixels wide, 0 below (one
        pixel is an eighth of an 8 x 8 digits image: not a near-duplicate).
    """

    kind: str = "zipf"
    a: float = 2.0
    cap: int = 50
    noise: float = 0.05
    shift: int | None = None

    @property
    def text(self) -> str:
        shift = "" if self.shift is None else f",shift={self.shift}"
        return f"{self.kind}:a={self.a:g},cap={self.cap},noise={self.noise:g}{shift}"

    def shift_for(self, image_shape) -> int:
        if image_shape is None:
            return 0
        if self.shift is not None:
            return int(self.shift)
        return 1 if min(image_shape) >= 16 else 0


def parse_redundancy(text) -> RedundancySpec:
    """Parse ``zipf[:a=2,cap=50,noise=0.05,shift=1]`` (``,`` or ``:`` between parameters)."""
    if isinstance(text, RedundancySpec):
        return text
    s = "".join(str(text).split())
    kind, _, rest = s.partition(":")
    if kind != "zipf":
        raise BatchalInputError(f"--redundancy: unknown model {kind!r}; use zipf[:a=2,cap=50,noise=0.05,shift=1]")
    kw: dict = {}
    types = {"a": float, "cap": int, "noise": float, "shift": int}
    for item in filter(None, rest.replace(":", ",").split(",")):
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise BatchalInputError(f"--redundancy {s!r}: expected key=value with key in {', '.join(types)}; got {item!r}")
        try:
            kw[key] = types[key](val)
        except ValueError:
            raise BatchalInputError(f"--redundancy {s!r}: {key} must be {types[key].__name__}; got {val!r}") from None
    spec = RedundancySpec(kind, **kw)
    if not (np.isfinite(spec.a) and spec.a > 1):
        raise BatchalInputError(f"--redundancy: a must be > 1; got {spec.a}")
    if spec.cap < 1:
        raise BatchalInputError(f"--redundancy: cap must be >= 1; got {spec.cap}")
    if not (np.isfinite(spec.noise) and spec.noise >= 0):
        raise BatchalInputError(f"--redundancy: noise must be >= 0; got {spec.noise}")
    if spec.shift is not None and spec.shift < 0:
        raise BatchalInputError(f"--redundancy: shift must be >= 0; got {spec.shift}")
    return spec


def _shift_images(imgs: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Translate each (h, w) image by (dy, dx) pixels, filling with the image's minimum (background)."""
    out = np.empty_like(imgs)
    h, w = imgs.shape[1:]
    for sy in np.unique(dy):
        for sx in np.unique(dx):
            sel = np.flatnonzero((dy == sy) & (dx == sx))
            if sel.size == 0:
                continue
            block = imgs[sel]
            moved = np.empty_like(block)
            moved[...] = block.min(axis=(1, 2), keepdims=True)
            ys, yd = (slice(0, h - sy), slice(sy, h)) if sy >= 0 else (slice(-sy, h), slice(0, h + sy))
            xs, xd = (slice(0, w - sx), slice(sx, w)) if sx >= 0 else (slice(-sx, w), slice(0, w + sx))
            moved[:, yd, xd] = block[:, ys, xs]
            out[sel] = moved
    return out


def make_redundant(dataset: Dataset, spec="zipf", *, seed: int = 0) -> Dataset:
    """A copy of ``dataset`` whose pool repeats each row ``m ~ Zipf(a)`` times (clipped at ``cap``).

    Parameters
    ----------
    dataset : Dataset
    spec : str or RedundancySpec
        ``zipf[:a=2,cap=50,noise=0.05,shift=S]``.
    seed : int
        The same seed gives the same multiplicities and perturbations.

    Returns
    -------
    Dataset
        Pool rows shuffled; ``source`` gives each row's original pool row and
        ``redundancy`` the spec and the multiplicity statistics. ``X_test`` and
        ``y_test`` are the original arrays, untouched.
    """
    spec = parse_redundancy(spec)
    rng = np.random.default_rng([int(seed), 0x5EED])
    X, y = dataset.X, dataset.y
    n = X.shape[0]
    mult = np.minimum(rng.zipf(spec.a, size=n), spec.cap).astype(np.int64)
    source = np.repeat(np.arange(n), mult)
    first = np.ones(source.shape[0], dtype=bool)
    first[1:] = source[1:] != source[:-1]  # the first occurrence of a row stays exact
    copies = np.flatnonzero(~first)
    Xr = np.array(X[source], dtype=np.float32)
    if copies.size:
        shift = spec.shift_for(dataset.image_shape)
        if shift > 0:
            h, w = dataset.image_shape
            dy = rng.integers(-shift, shift + 1, copies.size)
            dx = rng.integers(-shift, shift + 1, copies.size)
            Xr[copies] = _shift_images(Xr[copies].reshape(-1, h, w), dy, dx).reshape(copies.size, -1)
        if spec.noise > 0:
            # relative to each feature's spread, images included: a pixel that is always
            # background stays background, as in a re-encoded or re-uploaded copy
            scale = X.std(axis=0)
            noise = rng.normal(size=(copies.size, X.shape[1])).astype(np.float32)
            Xr[copies] += (spec.noise * noise * scale).astype(np.float32)
        if dataset.image_shape is not None:  # keep pixels in the data's range
            Xr[copies] = np.clip(Xr[copies], float(X.min()), float(X.max()))
    perm = rng.permutation(source.shape[0])
    Xr, source = Xr[perm], source[perm]
    counts = np.bincount(mult, minlength=spec.cap + 1)
    stats = {
        "spec": spec.text + ("" if spec.shift is not None or dataset.image_shape is None
                             else f",shift={spec.shift_for(dataset.image_shape)}"),
        "original_rows": int(n),
        "pool_rows": int(source.shape[0]),
        "mean_multiplicity": float(mult.mean()),
        "median_multiplicity": float(np.median(mult)),
        "max_multiplicity": int(mult.max()),
        "share_rows_single": float(mult[mult == 1].sum() / mult.sum()),
        "share_rows_in_groups_of_10_plus": float(mult[mult >= 10].sum() / mult.sum()),
        "multiplicity_counts": {int(k): int(v) for k, v in enumerate(counts) if v},
    }
    return dataclasses.replace(dataset, name=f"{dataset.name}+zipf", X=Xr, y=np.asarray(y)[source],
                               source=source.astype(np.int64), redundancy=stats)
