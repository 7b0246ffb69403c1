"""The one mask-vs-image rule (components/masks.py) that ingest and extract_patches both apply."""

from __future__ import annotations

from mammo.components.masks import OK, RESCALED, SIZE_MISMATCH, choose_mask, fit_mask


def test_same_size_is_ok_within_tolerance_is_rescaled_beyond_is_a_mismatch():
    assert fit_mask((4000, 3000), (4000, 3000), 0.02).status == OK
    assert fit_mask((4040, 2980), (4000, 3000), 0.02).status == RESCALED
    assert fit_mask((4100, 3000), (4000, 3000), 0.02).status == SIZE_MISMATCH
    assert not fit_mask((300, 300), (4000, 3000), 0.02).usable


def test_the_mask_is_told_from_the_crop_by_size_whatever_the_order():
    image = (4000, 3000)
    crop, mask = ("crop", (310, 290)), ("mask", (4000, 3000))
    for candidates in ([crop, mask], [mask, crop]):
        choice = choose_mask(candidates, image, 0.02)
        assert (choice.mask, choice.crops, choice.fit.status) == ("mask", ["crop"], OK)


def test_an_exact_mask_wins_over_a_rescalable_one_and_none_fits_gives_no_mask():
    choice = choose_mask([("near", (4030, 3000)), ("exact", (4000, 3000))], (4000, 3000), 0.02)
    assert (choice.mask, choice.crops) == ("exact", ["near"])
    none = choose_mask([("a", (300, 300)), ("b", (4400, 3000))], (4000, 3000), 0.02)
    assert (none.mask, none.fit, none.crops) == (None, None, ["a", "b"])
