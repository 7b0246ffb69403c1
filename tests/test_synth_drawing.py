"""Drawing synthetic mammograms: anatomy, each lesion class, placement, masks and crop boxes."""

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from mammo.components.synth.drawing import Lesion, NoiseBank, crop_box, plan_lesion, render

SHAPE = (256, 160)


@dataclass
class Abn:
    lesion: Lesion
    depth: float = 0.5


def _draw(cls: str, seed: int, side: str = "LEFT", view: str = "CC", shape: tuple[int, int] = SHAPE):
    lesion = plan_lesion(np.random.default_rng(seed), cls, shape[1], "ROUND" if cls == "mass_benign" else "")
    full, masks = render(np.random.default_rng([seed, 1]), NoiseBank(seed, shape), shape, view, side, 2, [Abn(lesion)])
    return full, masks[0]


@pytest.mark.parametrize("cls", ["calc_benign", "calc_malignant", "mass_benign", "mass_malignant"])
def test_each_lesion_lies_in_the_tissue_inside_its_binary_mask(cls):
    full, mask = _draw(cls, seed=1)
    assert full.dtype == np.uint16 and full.shape == mask.shape == SHAPE
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    m = mask > 0
    assert full[ndimage.binary_dilation(m, iterations=4)].min() > 5000  # tissue around, no background
    if cls.startswith("calc"):
        bright = full > 45000
        assert bright[m].any() and not (bright & ~m).any()  # every speck inside the mask
    else:
        ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=3)
        assert full[m].mean() > np.median(full[ring]) + 4000


def test_malignant_calcifications_show_more_specks_than_benign_ones():
    def specks(cls):  # at the default 320 px width, for which speck sizes are tuned
        drawn = (_draw(cls, s, shape=(512, 320)) for s in range(4))
        return np.mean([ndimage.label((f > 40000) & (m > 0))[1] for f, m in drawn])

    assert specks("calc_malignant") > 2 * specks("calc_benign")


def test_a_right_breast_is_the_mirror_of_the_same_left_drawing():
    left, left_mask = _draw("mass_malignant", seed=3, side="LEFT", view="MLO")
    right, right_mask = _draw("mass_malignant", seed=3, side="RIGHT", view="MLO")
    np.testing.assert_array_equal(right, left[:, ::-1])
    np.testing.assert_array_equal(right_mask, left_mask[:, ::-1])
    w = SHAPE[1]
    assert left[:, : w // 10].mean() > left[:, -w // 10:].mean()  # against the chest wall (column 0)


def test_crop_box_holds_the_roi_with_a_margin_and_is_never_the_full_image():
    _, mask = _draw("mass_benign", seed=2)
    y0, y1, x0, x1 = crop_box(mask)
    ys, xs = np.nonzero(mask)
    assert y0 < ys.min() and ys.max() < y1 - 1 and x0 < xs.min() and xs.max() < x1 - 1
    full_mask = np.full((10, 10), 255, np.uint8)
    assert crop_box(full_mask) != (0, 10, 0, 10)


def test_a_lesion_that_fits_nowhere_is_a_clear_error():
    huge = plan_lesion(np.random.default_rng(0), "mass_benign", 2000, "ROUND")
    with pytest.raises(RuntimeError, match="no room for a lesion"):
        render(np.random.default_rng(0), NoiseBank(0, (64, 64)), (64, 64), "CC", "LEFT", 1, [Abn(huge)])
