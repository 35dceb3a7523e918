"""Bipartite soft matching: schedule, capping, CLS protection, merge arithmetic, ordering, dtypes."""

import pytest
import torch

from simvlg_video.model.tome import (
    bipartite_soft_matching,
    compose_assignments,
    merge_schedule,
    r_per_layer,
)


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(0)


def group_members(assignment: torch.Tensor, batch: int, output_index: int) -> torch.Tensor:
    return (assignment[batch] == output_index).nonzero().squeeze(-1)


def test_schedule_matches_the_reference_token_counts():
    expected = [257, 238, 219, 200, 181, 162, 143, 124, 105, 86, 67, 48, 29]
    assert merge_schedule(257, 19, 12) == expected


def test_schedule_caps_r_at_half_of_the_non_cls_tokens():
    assert merge_schedule(9, 10, 4) == [9, 5, 3, 2, 2]
    assert merge_schedule(9, 10, 2, protect_cls=False) == [9, 5, 3]


def test_schedule_takes_one_r_per_layer():
    assert merge_schedule(10, [1, 2, 0], 3) == [10, 9, 7, 7]


@pytest.mark.parametrize("bad_r", [[1, 2], [1, -1, 0], -3, [1, 1.5, 0], True])
def test_bad_r_is_rejected(bad_r):
    with pytest.raises(ValueError, match="r"):
        r_per_layer(bad_r, 3)


def test_r_larger_than_allowed_is_capped_in_matching():
    merge = bipartite_soft_matching(torch.randn(2, 9, 8), r=10)
    assert merge.r == 4
    out, _ = merge(torch.randn(2, 9, 3))
    assert out.shape == (2, 5, 3)


def test_cls_is_never_merged_even_when_identical_to_a_b_token():
    metric = torch.randn(3, 11, 8)
    metric[:, 0] = metric[:, 1]  # CLS would be the best match of all
    merge = bipartite_soft_matching(metric, r=2)  # 4 A tokens stay: CLS must stay first among them
    assignment = merge.assignment
    assert torch.equal(assignment[:, 0], torch.zeros(3, dtype=torch.long))
    assert torch.equal((assignment == 0).sum(dim=1), torch.ones(3, dtype=torch.long))
    x = torch.randn(3, 11, 4)
    assert torch.equal(merge(x)[0][:, 0], x[:, 0])


def test_without_protection_cls_can_merge():
    metric = torch.randn(1, 11, 8)
    metric[:, 0] = metric[:, 1]
    merge = bipartite_soft_matching(metric, r=1, protect_cls=False)
    assert merge.assignment[0, 0] == merge.assignment[0, 1]


def test_most_similar_pair_by_metric_is_merged_first():
    metric = torch.randn(2, 12, 16)
    metric[:, 6] = 3.0 * metric[:, 9]  # A token 6 (A index 3) has cosine 1 with B token 9 (B index 4)
    merge = bipartite_soft_matching(metric, r=1)
    assert merge.merged_a.tolist() == [[3], [3]]
    assert merge.partner_b.tolist() == [[4], [4]]
    assignment = merge.assignment
    assert torch.equal(assignment[:, 6], assignment[:, 9])


def test_output_order_is_kept_a_in_order_then_all_b_in_order():
    num_tokens, r = 13, 4
    merge = bipartite_soft_matching(torch.randn(2, num_tokens, 8), r=r)
    assignment = merge.assignment
    num_kept = (num_tokens + 1) // 2 - r
    b_positions = torch.arange(1, num_tokens, 2)
    assert torch.equal(assignment[:, b_positions], (num_kept + torch.arange(len(b_positions))).expand(2, -1))
    a_outputs = assignment[:, ::2]
    for batch in range(2):
        kept_outputs = a_outputs[batch][a_outputs[batch] < num_kept]  # in original position order
        assert torch.equal(kept_outputs, torch.arange(num_kept))
        assert (a_outputs[batch] >= num_kept).sum() == r


def test_mean_mode_outputs_plain_average_of_each_group():
    x = torch.randn(2, 15, 6)
    merge = bipartite_soft_matching(torch.randn(2, 15, 8), r=6)
    out, sizes = merge(x, "mean")
    assert sizes is None
    assignment = merge.assignment
    for batch in range(2):
        for index in range(out.shape[1]):
            members = group_members(assignment, batch, index)
            torch.testing.assert_close(out[batch, index], x[batch, members].mean(dim=0))


def test_mean_mode_uses_every_input_token_once():
    merge = bipartite_soft_matching(torch.randn(4, 21, 8), r=8)
    assignment = merge.assignment
    assert assignment.shape == (4, 21)
    counts = torch.stack([torch.bincount(row, minlength=13) for row in assignment])
    assert counts.shape == (4, 13) and torch.all(counts >= 1) and counts.sum() == 4 * 21


def test_weighted_mode_is_size_weighted_and_conserves_size():
    x = torch.randn(2, 15, 6)
    sizes = torch.randint(1, 5, (2, 15)).float()
    merge = bipartite_soft_matching(torch.randn(2, 15, 8), r=6)
    out, merged_sizes = merge(x, "weighted", sizes)
    torch.testing.assert_close(merged_sizes.sum(dim=1), sizes.sum(dim=1))
    assignment = merge.assignment
    for batch in range(2):
        for index in range(out.shape[1]):
            members = group_members(assignment, batch, index)
            weights = sizes[batch, members]
            expected = (x[batch, members] * weights[:, None]).sum(0) / weights.sum()
            torch.testing.assert_close(out[batch, index], expected)
            torch.testing.assert_close(merged_sizes[batch, index], weights.sum())


def test_weighted_mode_starts_from_size_one_and_sizes_add_over_layers():
    x = torch.randn(3, 17, 4)
    first = bipartite_soft_matching(torch.randn(3, 17, 8), r=5)
    x1, sizes1 = first(x, "weighted")
    second = bipartite_soft_matching(torch.randn(3, 12, 8), r=5)
    _, sizes2 = second(x1, "weighted", sizes1)
    assert torch.equal(sizes2.sum(dim=1), torch.full((3,), 17.0))
    composed = compose_assignments([first.assignment, second.assignment])
    expected_sizes = torch.stack([torch.bincount(row, minlength=7).float() for row in composed])
    assert torch.equal(sizes2, expected_sizes)


def test_composed_assignment_follows_tokens_through_layers():
    x = torch.randn(2, 17, 4, dtype=torch.float64)
    first = bipartite_soft_matching(torch.randn(2, 17, 8), r=5)
    second = bipartite_soft_matching(torch.randn(2, 12, 8), r=5)
    x1, sizes1 = first(x, "weighted")
    out, _ = second(x1, "weighted", sizes1)
    composed = compose_assignments([first.assignment, second.assignment])
    for batch in range(2):
        for index in range(out.shape[1]):
            members = group_members(composed, batch, index)
            torch.testing.assert_close(out[batch, index], x[batch, members].mean(dim=0))


def test_compose_rejects_mismatched_layers():
    first = bipartite_soft_matching(torch.randn(1, 17, 8), r=5).assignment
    with pytest.raises(ValueError, match="maps into 12 tokens"):
        compose_assignments([first, first])


def test_r_zero_is_identity():
    x = torch.randn(2, 9, 4)
    merge = bipartite_soft_matching(torch.randn(2, 9, 8), r=0)
    out, sizes = merge(x, "weighted")
    assert out is x and sizes is None
    assert torch.equal(merge.assignment, torch.arange(9).expand(2, -1))


def test_batch_items_are_matched_independently():
    metric, x = torch.randn(3, 19, 8), torch.randn(3, 19, 5)
    together = bipartite_soft_matching(metric, r=7)(x)[0]
    for batch in range(3):
        alone = bipartite_soft_matching(metric[batch : batch + 1], r=7)(x[batch : batch + 1])[0]
        assert torch.equal(together[batch : batch + 1], alone)


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_bf16_matches_fp32_up_to_rounding(mode):
    metric, x = torch.randn(2, 33, 8), torch.randn(2, 33, 16)
    merge = bipartite_soft_matching(metric, r=10)
    out32, _ = merge(x, mode)
    out16, _ = merge(x.bfloat16(), mode)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=1e-2, atol=1e-2)
    bf16_merge = bipartite_soft_matching(metric.bfloat16(), r=10)
    assert bf16_merge.assignment.shape == (2, 33)


def test_merge_passes_gradients_to_every_input_token():
    x = torch.randn(2, 11, 4, requires_grad=True)
    merge = bipartite_soft_matching(torch.randn(2, 11, 8), r=4)
    merge(x)[0].sum().backward()
    group_sizes = torch.stack([torch.bincount(row) for row in merge.assignment])
    expected = 1.0 / group_sizes.gather(1, merge.assignment)
    torch.testing.assert_close(x.grad, expected[..., None].expand_as(x))


def test_bad_inputs_get_clear_errors():
    merge = bipartite_soft_matching(torch.randn(2, 9, 8), r=2)
    with pytest.raises(ValueError, match=r"metric must be \(B, N, C\)"):
        bipartite_soft_matching(torch.randn(9, 8), r=2)
    with pytest.raises(ValueError, match="N=9"):
        merge(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match="merge mode"):
        merge(torch.randn(2, 9, 4), "max")
    with pytest.raises(ValueError, match="weighted"):
        merge(torch.randn(2, 9, 4), "mean", torch.ones(2, 9))
    with pytest.raises(ValueError, match="sizes must be"):
        merge(torch.randn(2, 9, 4), "weighted", torch.ones(2, 8))
