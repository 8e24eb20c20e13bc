"""Augmentations of step 1: deformation identities, contrast families, added sources, mask handling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from daqsm.errors import InputError
from daqsm.training_data.augment import (
    CONTRAST_FAMILIES,
    AugmentParams,
    add_sources,
    apply_contrast,
    augment_sample,
    clean_mask,
    contrast_curve,
    smooth_displacement,
    source_footprint,
    warp,
)

OFF = dict(elastic=False, affine=False, contrast=False, sources=False, erode_vox=0)


def blob(n=32, seed=0):
    """Ellipsoid mask with smooth random chi (ppm) inside, zero outside."""
    grid = np.indices((n, n, n), dtype=np.float32) - (n - 1) / 2
    mask = (grid[0] / (0.38 * n)) ** 2 + (grid[1] / (0.33 * n)) ** 2 + (grid[2] / (0.3 * n)) ** 2 <= 1
    rng = np.random.default_rng(seed)
    chi = ndi.gaussian_filter(rng.standard_normal((n, n, n)), 2).astype(np.float32)
    chi = 0.1 * chi / np.abs(chi).max()
    return np.where(mask, chi, 0).astype(np.float32), mask


def test_warp_identity_is_exact():
    chi, mask = blob()
    out, out_mask = warp(chi, mask, np.eye(3), np.zeros(3), np.zeros((3,) + chi.shape, np.float32))
    assert np.array_equal(out, chi)
    assert np.array_equal(out_mask, mask)


def test_zero_amplitude_sample_is_identity():
    chi, mask = blob()
    params = AugmentParams(elastic_alpha=0.0, rotation_deg=0.0, scale_range=0.0, shift_vox=0.0,
                           contrast=False, sources=False, erode_vox=0)
    out, out_mask, drawn = augment_sample(chi, mask, np.random.default_rng(1), params)
    assert np.array_equal(out, chi) and np.array_equal(out_mask, mask)
    assert drawn["elastic"]["max_displacement_vox"] == 0.0


def test_integer_shift_moves_by_that_many_voxels():
    chi, mask = blob()
    out, out_mask = warp(chi, mask, shift=(2, 0, -1))
    # output p samples input p + shift
    assert np.array_equal(out[:-2, :, 1:], chi[2:, :, :-1])
    assert np.array_equal(out_mask[:-2, :, 1:], mask[2:, :, :-1])


@pytest.mark.parametrize("workers", [1, 3])
def test_deformation_moves_structures_keeps_range_and_mask(workers):
    chi, mask = blob(40)
    params = AugmentParams(contrast=False, sources=False, elastic_alpha=4.0, rotation_deg=8.0)
    out, out_mask, drawn = augment_sample(chi, mask, np.random.default_rng(3), params, workers=workers)
    assert drawn["elastic"]["max_displacement_vox"] > 0.5
    assert not np.array_equal(out, chi)
    assert out.min() >= chi.min() - 1e-7 and out.max() <= chi.max() + 1e-7  # linear interpolation is convex
    assert np.all(out[~out_mask] == 0)  # no chi outside the mask
    assert 0.6 < out_mask.sum() / mask.sum() < 1.4
    labels, count = ndi.label(out_mask)
    assert count == 1


def test_warp_result_independent_of_workers():
    chi, mask = blob(40)
    params = AugmentParams(contrast=False, sources=False)
    a = augment_sample(chi, mask, np.random.default_rng(9), params, workers=1)
    b = augment_sample(chi, mask, np.random.default_rng(9), params, workers=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_displacement_rms_matches_the_simard_recipe():
    n, alpha, sigma = 48, 400.0, 4.0
    rng = np.random.default_rng(0)
    disp = smooth_displacement(rng, (n, n, n), alpha, sigma)
    expected = alpha * math.sqrt(1 / 3) * (2 * math.sqrt(math.pi) * sigma) ** -1.5
    direct = alpha * ndi.gaussian_filter(rng.uniform(-1, 1, (n, n, n)), sigma, mode="wrap")
    assert disp.shape == (3, n, n, n) and disp.dtype == np.float32
    assert 0.6 * expected < disp.std() < 1.4 * expected
    assert 0.6 * direct.std() < disp.std() < 1.4 * direct.std()
    assert np.all(smooth_displacement(rng, (n, n, n), 0.0, sigma) == 0)


@pytest.mark.parametrize("family", CONTRAST_FAMILIES)
def test_contrast_family_monotonic_sign_preserving_background_zero(family):
    chi, mask = blob()
    strength = {"gamma": 1.3, "log": 5.0, "sigmoid": 2.0}.get(family, 1.0)
    out, scale = apply_contrast(chi, mask, family, factor=1.1, strength=strength)
    assert np.all(out[~mask] == 0)
    order = np.argsort(chi[mask])
    assert np.all(np.diff(out[mask][order]) >= 0)  # non-decreasing in chi
    assert np.all(np.sign(out[mask]) == np.sign(chi[mask]))
    x = np.linspace(-2, 2, 401, dtype=np.float32)
    y = contrast_curve(x, family, strength)
    assert np.all(np.diff(y) > 0) and y[200] == 0 and abs(y[300] - 1) < 1e-6  # f(0)=0, f(1)=1
    if family == "none":
        assert np.allclose(out, 1.1 * chi, atol=1e-7)


def test_unknown_contrast_family_is_input_error():
    with pytest.raises(InputError, match="unknown"):
        contrast_curve(np.zeros(3), "cubic")


@pytest.mark.parametrize("sign,negative_fraction", [(1.0, 0.0), (-1.0, 1.0)])
def test_sources_count_value_and_size(sign, negative_fraction):
    n = 48
    mask = np.zeros((n, n, n), bool)
    mask[4:-4, 4:-4, 4:-4] = True
    chi = np.zeros((n, n, n), np.float32)
    params = AugmentParams(sources_shapes=("sphere",), sources_semi_axes_vox=(3.0, 3.0), sources_value_ppm=2.0,
                           sources_value_sd_ppm=0.0, sources_negative_fraction=negative_fraction)
    out, drawn = add_sources(chi, mask, np.random.default_rng(4), params, count=4)
    labels, count = ndi.label(out != 0)
    assert count == 4 == len(drawn)
    assert set(np.unique(out[out != 0]).tolist()) == {sign * 2.0}
    sizes = np.bincount(labels.ravel())[1:]
    assert np.all(sizes == len(source_footprint("sphere", (3, 3, 3), np.eye(3))))
    assert np.all(np.abs(sizes - 4 / 3 * math.pi * 27) < 0.15 * 4 / 3 * math.pi * 27)
    assert np.all(out[~mask] == 0)


def test_cylinder_and_ellipsoid_sources_are_single_components():
    n = 48
    mask = np.ones((n, n, n), bool)
    params = AugmentParams(sources_shapes=("cylinder", "ellipsoid"), sources_value_sd_ppm=0.0)
    out, drawn = add_sources(np.zeros((n, n, n), np.float32), mask, np.random.default_rng(2), params, count=3)
    labels, count = ndi.label(out != 0)
    assert count == len(drawn) == 3
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == sorted(d["voxels"] for d in drawn)


def test_clean_mask_keeps_largest_component_and_erodes():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:12, 2:12, 2:12] = True
    mask[15:18, 15:18, 15:18] = True
    kept = clean_mask(mask, largest_component=True, erode_vox=0)
    assert kept.sum() == 1000
    assert clean_mask(mask, True, 1).sum() == 8 ** 3


@pytest.mark.parametrize("kwargs", [dict(elastic_alpha=-1.0), dict(sources_probability=1.5),
                                    dict(gamma_range=(1.2, 0.8)), dict(contrast_families=()),
                                    dict(scale_range=0.7)])
def test_bad_parameters_are_input_errors(kwargs):
    with pytest.raises(InputError):
        AugmentParams(**kwargs)


def test_default_sources_are_the_recipes_solids_and_veins_are_never_negative():
    # recipe (docs/physics.md): spheres/ellipsoids at +-2 ppm; no cylinders unless asked for
    assert set(AugmentParams().sources_shapes) == {"sphere", "ellipsoid"}
    n = 40
    mask = np.ones((n, n, n), bool)
    shapes = []
    for seed in range(6):
        _, drawn = add_sources(np.zeros((n, n, n), np.float32), mask, np.random.default_rng(seed), AugmentParams(),
                               count=4)
        shapes += [d["shape"] for d in drawn]
    assert shapes and "cylinder" not in shapes
    veins = AugmentParams(sources_shapes=("cylinder",), sources_negative_fraction=1.0)
    _, drawn = add_sources(np.zeros((n, n, n), np.float32), mask, np.random.default_rng(1), veins, count=3)
    assert drawn and all(d["shape"] == "cylinder" and d["value_ppm"] > 0 for d in drawn)
