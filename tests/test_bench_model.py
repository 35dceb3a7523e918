"""The model benchmark and the speed settings it uses: FLOP formula against torch's counter, full-size shapes on the
meta device, what each variant sets, settings that must not change results, and a tiny run end to end on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from simvlg_video.adapters.patch import add_temporal_adapters, remove_temporal_adapters
from simvlg_video.adapters.placements import merged_tokens
from simvlg_video.bench.flops import CaptionerSizes, training_step_flops, vit_forward_flops
from simvlg_video.bench.model import (
    FULL,
    TINY,
    Options,
    build_random_captioner,
    configure,
    main,
    parse_variant,
    random_batch,
)
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.performance import cast_frozen_, set_fused_attention
from simvlg_video.model.vit import vit_tokens

TRAINABLE = ["ln_vision", "VL_proj", "connector", "opt_proj"]
OPTIONS = Options(batch=2, frames=3, text_tokens=5, steps=1, warmup=1, adapter=TINY.adapter)


@pytest.fixture(scope="module")
def captioner():
    torch.manual_seed(0)
    return build_random_captioner(TINY, torch.device("cpu"))


def place_adapters(model, blocks) -> None:
    remove_temporal_adapters(model.vit)
    model.temporal_pool = None
    if blocks == "merged":
        merged_tokens(model, num_heads=TINY.adapter["num_heads"], time_encoding="sinusoidal",
                      space_encoding="sinusoidal")
        apply_freeze_policy(model, [*TRAINABLE, "adapters"])
        return
    if blocks is None:
        apply_freeze_policy(model, TRAINABLE)
        return
    add_temporal_adapters(model.vit, blocks=blocks, **TINY.adapter)
    apply_freeze_policy(model, [*TRAINABLE, "adapters"])


@pytest.mark.parametrize("blocks", ["all", [7, 8, 9], [1, 3], None, "merged"])
def test_training_flop_formula_matches_torchs_flop_counter(captioner, blocks):
    place_adapters(captioner, blocks)
    set_fused_attention(captioner, False)  # torch counts matmuls exactly; CPU fused attention is not counted
    frames, ids, mask, labels = random_batch(captioner, OPTIONS, torch.device("cpu"), TINY.image_size)
    with FlopCounterMode(display=False) as counter:
        captioner.caption_loss(frames, ids, mask, labels).backward()
    captioner.zero_grad(set_to_none=True)
    expected = training_step_flops(CaptionerSizes.of(captioner), OPTIONS.batch, OPTIONS.frames, OPTIONS.text_tokens)
    assert counter.get_total_flops() == expected


def test_vit_forward_flop_formula_matches_torchs_flop_counter(captioner):
    place_adapters(captioner, None)
    set_fused_attention(captioner, False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vit_tokens(captioner.vit, torch.randn(5, 3, TINY.image_size, TINY.image_size))
    assert counter.get_total_flops() == vit_forward_flops(CaptionerSizes.of(captioner), 5)


def test_full_size_model_has_the_reference_sizes():
    """REFERENCE.md: OPT-2.7B, a 39-block ViT-g, 85.5M connector, 88.5M trainable, 28.1M of adapters, 257 -> 29."""
    model = build_random_captioner(FULL, torch.device("meta"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.lm) == 2_651_596_800
    assert count(model.vit) == 985_894_528
    assert count(model.connector) == 85_450_752
    assert sum(count(getattr(model, name)) for name in TRAINABLE) == 88_504_320
    add_temporal_adapters(model.vit, **FULL.adapter)
    assert sum(count(block.temporal_merge) for block in model.vit.blocks) == 39 * 721_409
    assert model.connector.merge_schedule(257)[-1] == 29
    # 814 frames/s of ViT-g forward measured at about 420 TFLOP/s (REFERENCE.md section 4 / the issue).
    assert vit_forward_flops(CaptionerSizes.of(model), 814) / 1e12 == pytest.approx(424, abs=1)


def test_variants_set_precision_kernels_and_optimiser(captioner):
    optimizer, scaler = configure(captioner, parse_variant("reference"), OPTIONS)
    block = captioner.vit.blocks[0]
    assert isinstance(scaler, torch.amp.GradScaler)
    assert block.attn.qkv.weight.dtype == torch.float16 and block.attn.k_bias.dtype == torch.float16
    assert block.temporal_merge.query.weight.dtype == torch.float32 and block.temporal_merge.naive
    assert not block.attn.fused_attn and captioner.lm.config._attn_implementation == "eager"
    assert captioner.connector.config._attn_implementation == "eager"
    assert captioner.connector.encoder.layer[0].attention.self.query.weight.dtype == torch.float32

    optimizer, scaler = configure(captioner, parse_variant("last3"), OPTIONS)
    assert scaler is None
    assert [hasattr(b, "temporal_merge") for b in captioner.vit.blocks] == [False] * 7 + [True] * 3
    block = captioner.vit.blocks[-1]
    assert block.attn.qkv.weight.dtype == torch.bfloat16 and block.attn.fused_attn and not block.temporal_merge.naive
    assert captioner.lm.config._attn_implementation == "sdpa" and captioner.lm.lm_head.weight.dtype == torch.bfloat16
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in captioner.parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in captioner.parameters() if p.requires_grad)


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="unknown variant 'last'"):
        parse_variant("last")
    with pytest.raises(SystemExit):
        main(["--tiny", "--variants", "all,fast"])


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.caption_loss(*batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_fast_paths_and_checkpointing_keep_loss_and_gradients(captioner):
    """Fused vs plain attention and activation checkpointing are speed settings: same loss, same gradients (fp32)."""
    place_adapters(captioner, "all")
    cast_frozen_(captioner, torch.float32)
    captioner.eval()  # no dropout: results must be comparable
    with torch.no_grad():
        for block in captioner.vit.blocks:
            block.temporal_merge.alpha.fill_(0.3)
    batch = random_batch(captioner, OPTIONS, torch.device("cpu"), TINY.image_size)
    set_fused_attention(captioner, True)
    loss, grads = loss_and_grads(captioner, batch)
    set_fused_attention(captioner, False)
    naive_loss, naive_grads = loss_and_grads(captioner, batch)
    set_fused_attention(captioner, True)
    captioner.checkpoint_vit = True
    try:
        checkpointed_loss, checkpointed_grads = loss_and_grads(captioner, batch)
    finally:
        captioner.checkpoint_vit = False
    assert grads.keys() == naive_grads.keys() == checkpointed_grads.keys()
    assert any("temporal_merge" in name for name in grads)
    torch.testing.assert_close(naive_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(naive_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=0, atol=0, msg=name)


def test_cast_frozen_keeps_trainable_tensors_in_fp32(captioner):
    place_adapters(captioner, [9])
    counts = cast_frozen_(captioner, torch.bfloat16)
    assert counts["frozen"] > 0
    for name, param in captioner.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name


def test_tiny_benchmark_runs_end_to_end(tmp_path, capsys):
    report = main([
        "--tiny", "--variants", "reference,all,last3,merged,none", "--steps", "1", "--warmup", "1", "--vit-frames", "2",
        "--gen-batches", "2", "--gen-min-tokens", "4", "--gen-max-tokens", "4", "--gen-repeats", "1",
        "--json", str(tmp_path / "report.json"),
    ])
    rows = {r.variant: r for r in report.training}
    assert {name: r.adapters for name, r in rows.items()} == {
        "reference": 10, "all": 10, "last3": 3, "merged": 0, "none": 0}
    for row in rows.values():
        assert row.error is None and row.seconds_per_step > 0 and row.peak_gib is None
        assert torch.isfinite(torch.tensor(row.loss)) and row.mfu > 0
    assert rows["all"].tflop_per_step > rows["last3"].tflop_per_step > rows["none"].tflop_per_step
    assert rows["merged"].tflop_per_step > rows["none"].tflop_per_step  # the connector runs once per frame
    assert [v["attention"] for v in report.vit_forward] == ["fused", "naive"]
    assert report.generation[0]["mean_new_tokens"] == 4
    printed = capsys.readouterr().out
    assert "| reference | 10 |" in printed and "| 1.00x |" in printed and "| batch 2 | 5 |" in printed
    assert "merged: " in printed and "x the videos/s of all" in printed and "x the videos/s of none" in printed
    assert json.loads((tmp_path / "report.json").read_text())["training"][2]["variant"] == "last3"
