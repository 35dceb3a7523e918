"""The ToMe connector: parity with an independent loop implementation, with the unpatched BertModel, names, grads."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from simvlg_video.model.connector import ConnectorConfig, apply_tome, build_tome_connector

TINY = dict(hidden_size=32, num_heads=4, intermediate_size=64)


def make_connector(attn_implementation: str = "sdpa", **settings):
    return build_tome_connector(ConnectorConfig(**settings), attn_implementation)


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(0)


def perturb_weights(model: torch.nn.Module, scale: float = 0.2) -> None:
    """Move away from BERT's near-uniform init (std 0.02, LayerNorm 1/0) so attention and norms matter."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def plain_bert_like(connector) -> BertModel:
    """An unpatched BertModel with the connector's config, loaded with the connector's weights."""
    plain = BertModel(connector.config, add_pooling_layer=False)
    result = plain.load_state_dict(connector.state_dict(), strict=False)
    assert result.missing_keys == ["embeddings.word_embeddings.weight"] and not result.unexpected_keys
    return plain


# ---- an independent, loop-based reference of the whole connector (one sample at a time, float64) ----


def reference_layer_norm(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps)


def reference_linear(x, linear):
    return x @ linear.weight.double().T + linear.bias.double()


def reference_matching(metric, r):
    """Groups of token positions, in output order, by the rules of bipartite soft matching (loops over tokens)."""
    num_tokens = metric.shape[0]
    a_positions, b_positions = list(range(0, num_tokens, 2)), list(range(1, num_tokens, 2))
    r = min(r, (num_tokens - 1) // 2)
    best = {}
    for a in a_positions[1:]:  # position 0 is CLS: never merged
        similarities = [F.cosine_similarity(metric[a], metric[b], dim=0).item() for b in b_positions]
        best_index = max(range(len(b_positions)), key=lambda i: similarities[i])
        best[a] = (similarities[best_index], b_positions[best_index])
    merged = sorted(best, key=lambda a: -best[a][0])[:r]
    kept = [a for a in a_positions if a not in merged]
    return [[a] for a in kept] + [[b] + [a for a in merged if best[a][1] == b] for b in b_positions]


def reference_layer(layer, hidden, sizes, r, mode):
    attention = layer.attention.self
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    q, k, v = (reference_linear(hidden, m) for m in (attention.query, attention.key, attention.value))
    per_head = []
    for head in range(heads):
        cols = slice(head * head_size, (head + 1) * head_size)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(head_size)
        if mode == "weighted":
            logits = logits + torch.log(sizes)[None, :]
        per_head.append(torch.softmax(logits, dim=-1) @ v[:, cols])
    context = torch.cat(per_head, dim=-1)
    block_out = layer.attention.output
    attended = reference_layer_norm(reference_linear(context, block_out.dense) + hidden, block_out.LayerNorm)

    metric = k.view(-1, heads, head_size).mean(dim=1)
    merged_tokens, merged_sizes = [], []
    for group in reference_matching(metric, r):
        if mode == "mean":
            merged_tokens.append(attended[group].mean(dim=0))
        else:
            weights = sizes[group]
            merged_tokens.append((attended[group] * weights[:, None]).sum(dim=0) / weights.sum())
        merged_sizes.append(sizes[group].sum())
    merged = torch.stack(merged_tokens)

    inner = F.gelu(reference_linear(merged, layer.intermediate.dense))
    output = reference_layer_norm(reference_linear(inner, layer.output.dense) + merged, layer.output.LayerNorm)
    return output, torch.stack(merged_sizes)


def reference_connector(connector, inputs_embeds, r_per_layer, mode):
    embeddings = connector.embeddings
    outputs = []
    for sample in inputs_embeds.double():
        num_tokens = sample.shape[0]
        hidden = sample + embeddings.token_type_embeddings.weight[0].double()
        hidden = hidden + embeddings.position_embeddings.weight[:num_tokens].double()
        hidden = reference_layer_norm(hidden, embeddings.LayerNorm)
        sizes = torch.ones(num_tokens, dtype=torch.float64)
        for layer, r in zip(connector.encoder.layer, r_per_layer):
            hidden, sizes = reference_layer(layer, hidden, sizes, r, mode)
        outputs.append(hidden)
    return torch.stack(outputs)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_matches_loop_reference(mode, attn_implementation):
    r = [3, 4, 2]
    connector = make_connector(
        num_layers=3, r=r, merge_mode=mode, attn_implementation=attn_implementation, **TINY
    ).eval()
    perturb_weights(connector)
    inputs = torch.randn(2, 17, 32)
    with torch.no_grad():
        output = connector(inputs)
        expected = reference_connector(connector, inputs, r, mode)
    assert output.shape == expected.shape == (2, 8, 32)
    relative_error = (output.double() - expected).norm() / expected.norm()
    assert relative_error <= 1e-5


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_r_zero_equals_unpatched_bert_exactly(mode):
    connector = make_connector(num_layers=2, r=0, merge_mode=mode, **TINY).eval()
    perturb_weights(connector)
    plain = plain_bert_like(connector).eval()
    inputs = torch.randn(2, 13, 32)
    with torch.no_grad():
        assert torch.equal(connector(inputs), plain(inputs_embeds=inputs).last_hidden_state)


def test_state_dict_has_hugging_face_names_without_word_embeddings():
    connector = make_connector(num_layers=2, **TINY)
    plain = BertModel(connector.config, add_pooling_layer=False)
    expected = set(plain.state_dict()) - {"embeddings.word_embeddings.weight"}
    assert set(connector.state_dict()) == expected
    for name in [
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.1.attention.self.key.bias",
        "encoder.layer.1.attention.output.dense.weight",
        "encoder.layer.1.attention.output.LayerNorm.weight",
        "encoder.layer.1.intermediate.dense.weight",
        "encoder.layer.1.output.LayerNorm.bias",
    ]:
        assert name in expected
    assert not list(connector.embeddings.word_embeddings.parameters())
    with pytest.raises(ValueError, match="inputs_embeds"):
        connector.embeddings.word_embeddings(torch.zeros(1, 3, dtype=torch.long))


def test_reference_token_counts_over_twelve_layers():
    connector = make_connector(num_layers=12, r=19, **TINY).eval()
    expected = [257, 238, 219, 200, 181, 162, 143, 124, 105, 86, 67, 48, 29]
    assert connector.merge_schedule(257) == expected
    assert connector.output_tokens(257) == 29
    connector.tome.record_groups = True
    with torch.no_grad():
        output = connector(torch.randn(2, 257, 32))
    assert output.shape == (2, 29, 32)
    assert [group.shape[1] for group in connector.last_merge_groups] == expected[:-1]
    final = connector.last_token_assignment()
    assert final.shape == (2, 257)
    assert torch.equal(final[:, 0], torch.zeros(2, dtype=torch.long))  # CLS stays first and alone
    assert torch.equal((final == 0).sum(dim=1), torch.ones(2, dtype=torch.long))
    assert all(set(row.tolist()) == set(range(29)) for row in final)


def test_r_list_and_capping():
    connector = make_connector(num_layers=3, r=[10, 0, 1], **TINY).eval()
    assert connector.merge_schedule(9) == [9, 5, 5, 4]
    with torch.no_grad():
        assert connector(torch.randn(1, 9, 32)).shape == (1, 4, 32)


def test_weighted_mode_tracks_sizes_that_sum_to_the_input_count():
    connector = make_connector(num_layers=3, r=4, merge_mode="weighted", **TINY).eval()
    with torch.no_grad():
        connector(torch.randn(3, 21, 32))
    final_sizes = connector.tome.sizes[-1]
    assert final_sizes.shape == (3, 9)
    assert torch.equal(final_sizes.sum(dim=1), torch.full((3,), 21.0))


def test_merge_metric_is_the_layer_keys():
    """Two tokens whose keys agree but whose hidden states differ get merged; a pair similar only in hidden state
    not."""
    connector = make_connector(num_layers=1, r=1, **TINY).eval()
    perturb_weights(connector)
    with torch.no_grad():
        connector.embeddings.position_embeddings.weight.zero_()
        connector.embeddings.token_type_embeddings.weight.zero_()
        connector.encoder.layer[0].attention.self.key.weight[:, 4:] = 0  # keys read only the first 4 features
    inputs = torch.randn(1, 9, 32)
    inputs[0, 6, :4] = inputs[0, 3, :4]  # target: same first 4 features; permuted rest keeps LayerNorm statistics
    inputs[0, 6, 4:] = inputs[0, 3, 4:][torch.randperm(28)]
    inputs[0, 4, 4:] = inputs[0, 1, 4:]  # decoy: nearly identical hidden states, different keys
    connector.tome.record_groups = True
    with torch.no_grad():
        connector(inputs)
    assignment = connector.last_merge_groups[0][0]
    assert assignment[6] == assignment[3]
    assert assignment[4] != assignment[1]


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_gradients_reach_every_parameter(mode):
    connector = make_connector(num_layers=2, r=3, merge_mode=mode, **TINY).train()
    connector(torch.randn(2, 15, 32)).square().mean().backward()
    for name, parameter in connector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients_in_weighted_mode():
    connector = make_connector(num_layers=3, r=3, merge_mode="weighted", **TINY).eval()
    perturb_weights(connector)
    checkpointed = copy.deepcopy(connector)
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.train()
    for module in checkpointed.modules():  # train mode for checkpointing, no dropout for the comparison
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = torch.randn(2, 15, 32)
    connector(inputs).sum().backward()
    checkpointed(inputs).sum().backward()
    for (name, plain), (_, replayed) in zip(connector.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(replayed.grad, plain.grad, msg=name)


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_bf16_forward_and_backward(mode):
    connector = make_connector(num_layers=2, r=4, merge_mode=mode, **TINY).to(torch.bfloat16)
    output = connector(torch.randn(2, 17, 32, dtype=torch.bfloat16))
    assert output.shape == (2, 9, 32) and output.dtype == torch.bfloat16
    assert torch.isfinite(output).all()
    output.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in connector.parameters())


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_bf16_autocast_over_fp32_weights(attn_implementation):
    """Under autocast the attention logits are bf16 while merged states and sizes stay fp32; the bias must fit both."""
    connector = make_connector(
        num_layers=2, r=4, merge_mode="weighted", attn_implementation=attn_implementation, **TINY
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = connector(torch.randn(2, 17, 32))
    assert output.shape == (2, 9, 32) and torch.isfinite(output).all()
    output.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in connector.parameters())


def test_apply_tome_patches_in_place_and_keeps_weights():
    connector = make_connector(num_layers=2, r=0, **TINY)
    plain = plain_bert_like(connector)
    before = dict(plain.named_parameters())
    patched = apply_tome(plain, r=2)
    assert patched is plain
    assert dict(patched.named_parameters()) == before
    assert patched.merge_schedule(11) == [11, 9, 7]
    assert apply_tome(patched, r=[1, 0]).merge_schedule(11) == [11, 10, 10]  # re-applying replaces the settings
    with torch.no_grad():
        assert patched(torch.randn(1, 11, 32)).shape == (1, 10, 32)


def test_bad_use_gets_clear_errors():
    connector = make_connector(num_layers=2, max_position_embeddings=16, r=1, **TINY)
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(B, N, 32\)"):
        connector(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        connector(torch.randn(1, 17, 32))
    with pytest.raises(RuntimeError, match="record_groups"):
        _ = connector.last_merge_groups
    with pytest.raises(ValueError, match="merge mode"):
        make_connector(num_layers=1, merge_mode="max", **TINY)
    with pytest.raises(ValueError, match="one per layer"):
        make_connector(num_layers=2, r=[1, 2, 3], **TINY)
    with pytest.raises(TypeError, match="BertModel"):
        apply_tome(torch.nn.Linear(2, 2), r=1)


def test_tracked_positions_are_the_mean_place_of_each_merged_group():
    torch.manual_seed(0)
    connector = make_connector(
        hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, max_position_embeddings=64, r=[5, 4, 3]
    ).eval()
    positions = torch.rand(2, 33, 2)
    connector.tome.record_groups = True
    out = connector(torch.randn(2, 33, 32), token_positions=positions)
    tracked = connector.last_token_positions()
    assignment = connector.last_token_assignment()
    assert tracked.shape == (2, out.shape[1], 2)
    for b in range(2):
        for token in range(out.shape[1]):
            members = positions[b][assignment[b] == token]
            torch.testing.assert_close(tracked[b, token], members.mean(dim=0))
    connector(torch.randn(2, 33, 32))
    with pytest.raises(RuntimeError, match="no token positions tracked"):
        connector.last_token_positions()
