"""The run's seed: the RNGs a training process draws from (Python's, NumPy's, torch's) all start from it."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
