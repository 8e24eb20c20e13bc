"""Built-in head phantom: deterministic anatomy, RC2 labels at plausible places, per-label values."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.training_data.simulator.phantom import make_phantom, phantom_grid
from daqsm.training_data.simulator.tissue import CHIREF_PPM, label_chi_ppm


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3.0, seed=0)


def test_grid_and_labels(phantom):
    assert phantom.labels.shape == phantom_grid(3.0)[0] == (61, 73, 61)
    present = set(np.unique(phantom.labels).tolist())
    assert set(range(1, 17)) - {12} <= present      # every RC2 label but fat
    assert phantom.mask[phantom.labels == 16].all() and phantom.mask[phantom.labels == 7].all()
    assert not phantom.mask[np.isin(phantom.labels, (13, 14, 15))].any()


def test_anatomy_is_deterministic_texture_follows_seed(phantom):
    again = make_phantom(3.0, seed=0)
    other = make_phantom(3.0, seed=1)
    assert np.array_equal(phantom.labels, other.labels)
    np.testing.assert_array_equal(phantom.chi_ppm, again.chi_ppm)
    assert not np.allclose(phantom.chi_ppm, other.chi_ppm)


def test_label_values_and_variants(phantom):
    for label in (8, 9, 11):
        mean = phantom.chi_ppm[(phantom.labels == label)].mean()
        assert mean == pytest.approx(CHIREF_PPM[label], abs=0.01)
    assert phantom.chi_ppm[phantom.labels == 16].mean() < -3.0
    assert np.all(phantom.chi_ppm[~phantom.mask] == 0)
    sim1 = label_chi_ppm("Sim1")
    assert abs(sim1[9] - sim1[8]) < abs(CHIREF_PPM[9] - CHIREF_PPM[8])   # Sim1: lower GM/WM contrast


def test_deep_grey_nuclei_are_bilateral_and_central(phantom):
    centre_x = (phantom.labels.shape[0] - 1) / 2
    for label in (1, 2, 3, 7):
        xs = np.nonzero(phantom.labels == label)[0]
        assert (xs < centre_x).any() and (xs > centre_x).any()
        assert abs(xs.mean() - centre_x) < 3


def test_magnitude_model(phantom):
    assert phantom.m0[phantom.labels == 14].max() == 0          # air gives no signal
    assert phantom.r2star_hz[phantom.labels == 2].mean() > phantom.r2star_hz[phantom.labels == 8].mean()
