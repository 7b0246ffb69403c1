"""The one rule for whether a ROI mask belongs to its image: same size, rescaled within a tolerance, or not.

CBIS-DDSM stores a ROI mask at its full image's size and a cropped image much smaller; the CSV
columns sometimes swap the two, so size is what tells them apart. A mask whose rows and columns
each differ from the image's by at most ``tolerance`` (a share, ``patches.mask_rescale_tolerance``,
default 2%) is accepted and rescaled onto the image; beyond that it does not belong to the image.
Ingest (from headers) and extract_patches (from decoded pixels) both decide with :func:`fit_mask`,
so a case ingest keeps is a case extract can use, and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

#: the mask has the image's size
OK = "ok"
#: within the tolerance: rescaled onto the image
RESCALED = "rescaled"
#: further apart than the tolerance
SIZE_MISMATCH = "size_mismatch"

K = TypeVar("K")


@dataclass(frozen=True)
class MaskFit:
    status: str  # OK | RESCALED | SIZE_MISMATCH
    detail: str

    @property
    def usable(self) -> bool:
        return self.status in (OK, RESCALED)


def size_within(shape: Sequence[int], target: Sequence[int], tolerance: float) -> bool:
    """Whether every side of ``shape`` is within ``tolerance`` (a share) of ``target``'s."""
    return len(shape) == len(target) and all(abs(a - b) <= tolerance * b for a, b in zip(shape, target))


def fit_mask(mask_shape: Sequence[int], image_shape: Sequence[int], tolerance: float) -> MaskFit:
    """How a mask of ``mask_shape`` (rows, cols) fits an image of ``image_shape``."""
    m, i = tuple(int(x) for x in mask_shape[:2]), tuple(int(x) for x in image_shape[:2])
    if m == i:
        return MaskFit(OK, f"mask {m[0]}x{m[1]} = image")
    if size_within(m, i, tolerance):
        return MaskFit(RESCALED, f"mask {m[0]}x{m[1]} vs image {i[0]}x{i[1]}: within {tolerance:.0%}, rescaled")
    return MaskFit(SIZE_MISMATCH, f"mask {m[0]}x{m[1]} vs image {i[0]}x{i[1]}: more than {tolerance:.0%} apart")


@dataclass(frozen=True)
class MaskChoice(Generic[K]):
    """Which of a row's ROI files is the mask (None if none fits) and which are crops."""

    mask: K | None
    fit: MaskFit | None
    crops: list[K]


def choose_mask(candidates: Sequence[tuple[K, Sequence[int]]], image_shape: Sequence[int],
                tolerance: float) -> MaskChoice[K]:
    """The mask among ``(key, (rows, cols))`` candidates: an exact fit first, else the closest
    within the tolerance; every other candidate is a crop."""
    fits = [(i, fit_mask(shape, image_shape, tolerance), shape) for i, (_, shape) in enumerate(candidates)]
    usable = [f for f in fits if f[1].usable]
    if not usable:
        return MaskChoice(None, None, [k for k, _ in candidates])
    best, fit, _ = min(usable, key=lambda f: (f[1].status != OK,
                                              sum(abs(int(a) - int(b)) for a, b in zip(f[2], image_shape)), f[0]))
    return MaskChoice(candidates[best][0], fit, [k for i, (k, _) in enumerate(candidates) if i != best])
