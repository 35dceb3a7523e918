"""The linear readout behind `eval.motion_readout`: it finds a direction that is there and none that is not."""

from __future__ import annotations

import numpy as np

from simvlg_video.eval.motion_readout import ridge_readout


def features(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    """High-dimensional noise (more dimensions than samples, as soft prompts are) with the label spread over 25 axes."""
    x = rng.normal(size=(len(labels), 500))
    x[:, :25] += signal * np.where(labels, 1.0, -1.0)[:, None]
    return x


def test_a_linearly_present_direction_is_found_on_held_out_clips():
    rng = np.random.default_rng(0)
    train_y, test_y = rng.random(200) < 0.5, rng.random(100) < 0.5
    train_acc, test_acc = ridge_readout(features(rng, train_y, 1.0), train_y, features(rng, test_y, 1.0), test_y)
    assert train_acc == 1.0 and test_acc >= 0.9


def test_no_direction_means_chance_on_held_out_clips_however_well_it_fits_training():
    rng = np.random.default_rng(1)
    train_y, test_y = rng.random(200) < 0.5, rng.random(400) < 0.5
    train_acc, test_acc = ridge_readout(features(rng, train_y, 0.0), train_y, features(rng, test_y, 0.0), test_y)
    assert train_acc == 1.0, "500 dimensions fit 200 random labels"
    assert 0.4 <= test_acc <= 0.6
