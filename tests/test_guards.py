"""Guards: non-finite steps are counted and too many in a row stop the run; grad-norm spikes are flagged."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.train.guards import GradNormWatch, NonFiniteGuard, TooManyNonFiniteSteps


def test_only_consecutive_non_finite_steps_stop_the_run():
    guard = NonFiniteGuard(max_in_a_row=3, device=torch.device("cpu"))
    for bad in [1, 1, 0, 1, 1, 0, 0]:
        guard.update(torch.tensor(bool(bad)))
    guard.check(step=7)  # four skipped, never three in a row
    assert guard.state_dict() == {"skipped": 4, "current_run": 0, "longest_run": 2}
    for _ in range(3):
        guard.update(torch.tensor(True))
    with pytest.raises(TooManyNonFiniteSteps, match=r"3 steps in a row.*max_nonfinite_in_a_row=3.*step 10"):
        guard.check(step=10)


def test_guard_state_round_trips():
    guard = NonFiniteGuard(max_in_a_row=5, device=torch.device("cpu"))
    guard.update(torch.tensor(True))
    restored = NonFiniteGuard(max_in_a_row=5, device=torch.device("cpu"))
    restored.load_state_dict(guard.state_dict())
    restored.update(torch.tensor(True))
    assert restored.state_dict() == {"skipped": 2, "current_run": 2, "longest_run": 2}


def test_a_grad_norm_far_above_its_average_is_flagged(caplog: pytest.LogCaptureFixture):
    watch = GradNormWatch(factor=10.0, warmup_logs=3)
    assert [watch.is_spike(n, step) for step, n in enumerate([1.0, 1.2, 0.9, 1.1, 2.0])] == [False] * 5
    assert watch.is_spike(50.0, step=60)
    assert "gradient norm 50 at step 60" in caplog.text
    assert not watch.is_spike(float("nan"), step=61), "a skipped step is the guard's business, not a spike"
    assert not watch.is_spike(1.0, step=62), "the spike must not have raised the average"
