"""The model benchmark and the speed settings it uses: FLOP formula against torch's counter (and, at full size, a
count written out by hand from the architecture), full-size shapes on the meta device, what each variant sets,
settings that must not change results, and a tiny run end to end on the CPU.

Every test builds its own tiny captioner: the variants change a model in place, so a shared one would carry one
test's adapters, dtypes and kernels into the next.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from simvlg_video.adapters.patch import TemporalEvaBlock
from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.adapters.token_pool import TemporalTokenPool
from simvlg_video.bench.flops import CaptionerSizes, training_step_flops, vit_forward_flops
from simvlg_video.bench.model import main, matmul_peaks
from simvlg_video.bench.model_report import format_mfu
from simvlg_video.bench.model_sizes import FULL, FULL_QFORMER, TINY, TINY_QFORMER, build_random_captioner
from simvlg_video.bench.model_variants import Options, configure, parse_variant, random_batch
from simvlg_video.bench.timing import model_flop_utilisation
from simvlg_video.model.adapter_protocol import ADAPTERS, adapter_parameters
from simvlg_video.model.captioner import MeanOverTime
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.speed import cast_frozen_, set_fused_attention
from simvlg_video.model.vit import vit_tokens

TRAINABLE = ["ln_vision", "VL_proj", "connector", "opt_proj"]
OPTIONS = Options(
    batch=2, frames=3, text_tokens=5, steps=1, warmup=1, adapter=TINY.adapter, connector_r=TINY.connector["r"]
)


def tiny_captioner(placement=None, sizes=TINY):
    """A fresh tiny captioner with random weights; `placement`: None (the image model), "merged" (the merged-token
    pool; "merged_frames_no_grad": its frames' tokens without autograd; "merged_frame_average": started from the
    frames' average; "merged_spans": reading 2 spans of frames) or the blocks of reference adapters ("all" or
    indices). Parts train as in the benchmark."""
    torch.manual_seed(0)
    model = build_random_captioner(sizes, torch.device("cpu"))
    if placement is None:
        apply_freeze_policy(model, TRAINABLE)
        return model
    if placement in ("merged", "merged_frames_no_grad", "merged_frame_average", "merged_spans"):
        MergedTokens(
            num_heads=TINY.adapter["num_heads"],
            queries="frame_average" if placement == "merged_frame_average" else "clip_view",
            frame_gradients=placement != "merged_frames_no_grad",
            spans=2 if placement == "merged_spans" else None,
        ).apply(model)
    else:
        Reference(blocks=placement, **TINY.adapter).apply(model)
    apply_freeze_policy(model, [*TRAINABLE, ADAPTERS])
    return model


@pytest.mark.parametrize("sizes", [TINY, TINY_QFORMER], ids=["tome", "qformer"])
@pytest.mark.parametrize(
    "placement",
    ["all", [7, 8, 9], [1, 3], None, "merged", "merged_frames_no_grad", "merged_frame_average", "merged_spans"],
)
def test_training_flop_formula_matches_torchs_flop_counter(placement, sizes):
    if placement == "merged_frames_no_grad" and sizes is TINY_QFORMER:
        pytest.skip("torch's FLOP counter fails on a no-grad pass of the Q-Former (its query tokens enter as leaves)")
    model = tiny_captioner(placement, sizes)
    set_fused_attention(model, False)  # torch counts matmuls exactly; CPU fused attention is not counted
    frames, ids, mask, labels = random_batch(model, OPTIONS, torch.device("cpu"), TINY.image_size)
    with FlopCounterMode(display=False) as counter:
        model.caption_loss(frames, ids, mask, labels).backward()
    expected = training_step_flops(CaptionerSizes.of(model), OPTIONS.batch, OPTIONS.frames, OPTIONS.text_tokens)
    assert counter.get_total_flops() == expected


def test_vit_forward_flop_formula_matches_torchs_flop_counter():
    model = tiny_captioner()
    set_fused_attention(model, False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vit_tokens(model.vit, torch.randn(5, 3, TINY.image_size, TINY.image_size))
    assert counter.get_total_flops() == vit_forward_flops(CaptionerSizes.of(model), 5)


def eva_vit_g_flops_by_hand(frames: int) -> int:
    """ViT-g/14 forward at 224 px as BLIP-2 builds it (39 blocks of width 1408, 16 heads, MLP 6144; 256 patches
    + CLS), 2 FLOPs per multiply-add of every matrix product, written out from the architecture."""
    tokens, width, mlp, patch_inputs, patches = 257, 1408, 6144, 3 * 14 * 14, 256
    patch_embedding = 2 * patches * patch_inputs * width
    qkv = 2 * tokens * width * (3 * width)
    scores = 2 * tokens * tokens * width  # Q Kᵀ over all heads
    mixing = 2 * tokens * tokens * width  # P V over all heads
    proj = 2 * tokens * width * width
    fc1, fc2 = 2 * tokens * width * mlp, 2 * tokens * mlp * width
    return frames * (patch_embedding + 39 * (qkv + scores + mixing + proj + fc1 + fc2))


def test_full_size_vit_flops_agree_three_ways():
    """At full size on the meta device (no data, no compute): torch's counter, the formula and the count by hand.
    814 frames of ViT-g are then about 424 TFLOP (what 814 frames/s at about 420 TFLOP/s measured)."""
    model = build_random_captioner(FULL, torch.device("meta"))
    set_fused_attention(model, False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vit_tokens(model.vit, torch.empty(2, 3, FULL.image_size, FULL.image_size, device="meta"))
    assert counter.get_total_flops() == eva_vit_g_flops_by_hand(2)
    assert vit_forward_flops(CaptionerSizes.of(model), 2) == eva_vit_g_flops_by_hand(2)
    assert vit_forward_flops(CaptionerSizes.of(model), 814) == eva_vit_g_flops_by_hand(814)
    assert round(eva_vit_g_flops_by_hand(814) / 1e12) == 424


def test_full_size_model_has_the_reference_sizes():
    """The reference's sizes: OPT-2.7B, a 39-block ViT-g, 85.5M connector, 88.5M trainable, 28.1M of adapters,
    257 -> 29."""
    model = build_random_captioner(FULL, torch.device("meta"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.lm) == 2_651_596_800
    assert count(model.vit) == 985_894_528
    assert count(model.connector) == 85_450_752
    assert sum(count(getattr(model, name)) for name in TRAINABLE) == 88_504_320
    Reference(**FULL.adapter).apply(model)
    assert sum(count(block.temporal_merge) for block in model.vit.blocks) == 39 * 721_409
    assert model.connector.merge_schedule(257)[-1] == 29


def test_full_size_blip2_has_its_sizes():
    """BLIP-2 OPT-2.7B: SimVLG's ViT and LLM, a Q-Former of 32 queries over a bert-base in
    the ToMe connector's place; the Q-Former's count is written out in tests/test_configs.py."""
    from test_configs import blip2_trainable_by_hand

    model = build_random_captioner(FULL_QFORMER, torch.device("meta"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.lm) == 2_651_596_800 and count(model.vit) == 985_894_528
    assert sum(count(getattr(model, name)) for name in TRAINABLE) == blip2_trainable_by_hand()
    assert model.connector.output_tokens(257) == 32 and isinstance(model.VL_proj, torch.nn.Identity)
    sizes = CaptionerSizes.of(model)
    assert (sizes.queries, sizes.connector_layers, sizes.cross_layers) == (32, 12, 6)


def test_variants_set_precision_kernels_and_optimiser():
    """One model through port -> last3 -> merged -> none, as the benchmark reuses it: each variant undoes the last."""
    model = tiny_captioner()
    optimizer, scaler = configure(model, parse_variant("port"), OPTIONS)
    block = model.vit.blocks[0]
    assert isinstance(scaler, torch.amp.GradScaler) and isinstance(optimizer, torch.optim.AdamW)
    assert all(type(b) is TemporalEvaBlock for b in model.vit.blocks)
    assert block.attn.qkv.weight.dtype == torch.float16 and block.attn.k_bias.dtype == torch.float16
    assert block.temporal_merge.query.weight.dtype == torch.float32 and block.temporal_merge.plain
    assert not block.attn.fused_attn and model.lm.config._attn_implementation == "eager"
    assert model.connector.config._attn_implementation == "eager"
    assert model.connector.encoder.layer[0].attention.self.query.weight.dtype == torch.float32

    optimizer, scaler = configure(model, parse_variant("last3"), OPTIONS)
    assert scaler is None
    assert [type(b) is TemporalEvaBlock for b in model.vit.blocks] == [False] * 7 + [True] * 3
    block = model.vit.blocks[-1]
    assert block.attn.qkv.weight.dtype == torch.bfloat16 and block.attn.fused_attn and not block.temporal_merge.plain
    assert model.lm.config._attn_implementation == "sdpa" and model.lm.lm_head.weight.dtype == torch.bfloat16
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)

    optimizer, _ = configure(model, parse_variant("merged"), OPTIONS)
    assert not any(type(b) is TemporalEvaBlock for b in model.vit.blocks)
    assert isinstance(model.time_pool, TemporalTokenPool) and model.time_pool.out.weight.abs().sum() > 0
    assert {name for name, _ in adapter_parameters(model)} == {
        f"time_pool.{n}" for n, _ in model.time_pool.named_parameters()
    }
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.requires_grad for p in model.time_pool.parameters())

    optimizer, _ = configure(model, parse_variant("none"), OPTIONS)
    assert type(model.time_pool) is MeanOverTime and not adapter_parameters(model)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for name in TRAINABLE for p in getattr(model, name).parameters()}


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="unknown variant 'last'"):
        parse_variant("last")
    with pytest.raises(ValueError, match="unknown variant 'reference'"):
        parse_variant("reference")  # the plain port is called `port`
    with pytest.raises(SystemExit):
        main(["--tiny", "--variants", "all,fast"])


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.caption_loss(*batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_fast_paths_and_checkpointing_keep_loss_and_gradients():
    """Fused vs plain attention and activation checkpointing are speed settings: same loss, same gradients (fp32)."""
    model = tiny_captioner("all")
    model.eval()  # no dropout: results must be comparable
    with torch.no_grad():
        for block in model.vit.blocks:
            block.temporal_merge.alpha.fill_(0.3)
    batch = random_batch(model, OPTIONS, torch.device("cpu"), TINY.image_size)
    set_fused_attention(model, True)
    loss, grads = loss_and_grads(model, batch)
    set_fused_attention(model, False)
    naive_loss, naive_grads = loss_and_grads(model, batch)
    set_fused_attention(model, True)
    model.checkpoint_vit = True
    checkpointed_loss, checkpointed_grads = loss_and_grads(model, batch)
    assert grads.keys() == naive_grads.keys() == checkpointed_grads.keys()
    assert any("temporal_merge" in name for name in grads)
    assert all(grads[name].abs().sum() > 0 for name in grads if "temporal_merge" in name)  # not a vacuous match
    torch.testing.assert_close(naive_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(naive_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=0, atol=0, msg=name)


def test_cast_frozen_keeps_trainable_tensors_in_fp32():
    model = tiny_captioner([9])
    counts = cast_frozen_(model, torch.bfloat16)
    assert counts["frozen"] > 0 and counts["trainable"] == 0
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name
    assert model.vit.blocks[9].temporal_merge.alpha.dtype == torch.float32
    assert model.vit.blocks[0].attn.k_bias.dtype == torch.bfloat16  # a buffer of a frozen module follows it


def test_utilisation_above_the_measured_peak_is_reported_as_an_underestimated_peak():
    assert model_flop_utilisation(2.5e12, 10e12) == 0.25
    assert model_flop_utilisation(10e12, 10e12) == 1.0
    for rate, peak in [(16.8e12, 10e12), (1e12, 0.0)]:  # a peak below the achieved rate cannot be a peak
        assert model_flop_utilisation(rate, peak) is None
    assert format_mfu(None) == "n/a (peak underestimated)" and format_mfu(0.25) == "25.0%"


def test_the_peak_is_measured_in_each_dtype_a_step_computes_in():
    variants = [parse_variant("port"), parse_variant("merged")]
    assert [v.dtype for v in variants] == [torch.float16, torch.bfloat16]
    assert set(matmul_peaks(torch.device("cpu"), variants)) == {torch.float16, torch.bfloat16}
    assert set(matmul_peaks(torch.device("cpu"), variants[1:])) == {torch.bfloat16}


def test_tiny_benchmark_runs_end_to_end(tmp_path, capsys):
    report = main(
        [
            "--tiny",
            "--variants",
            "port,all,last3,merged,none",
            "--connectors",
            "tome,qformer",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--vit-frames",
            "2",
            "--gen-batches",
            "2",
            "--gen-min-tokens",
            "4",
            "--gen-max-tokens",
            "4",
            "--gen-repeats",
            "1",
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    assert set(report.peak_tflop_per_s) == {"bfloat16", "float16"}  # ours and the port's
    rows = {r.variant: r for r in report.training}
    blip2 = {name: rows.pop(name) for name in list(rows) if name.startswith("qformer/")}
    assert {name: r.adapters for name, r in rows.items()} == {"port": 10, "all": 10, "last3": 3, "merged": 0, "none": 0}
    assert {name: r.adapters for name, r in blip2.items()} == {f"qformer/{n}": r.adapters for n, r in rows.items()}
    assert all(r.error is None and torch.isfinite(torch.tensor(r.loss)) for r in blip2.values())
    for row in rows.values():
        assert row.error is None and row.seconds_per_step > 0 and row.peak_gib is None
        assert torch.isfinite(torch.tensor(row.loss)) and row.mfu > 0
    assert rows["port"].tflop_per_step == rows["all"].tflop_per_step  # the same model FLOPs, computed differently
    assert rows["all"].tflop_per_step > rows["last3"].tflop_per_step > rows["none"].tflop_per_step
    assert rows["merged"].tflop_per_step > rows["none"].tflop_per_step  # the connector runs once per frame
    assert [v["attention"] for v in report.vit_forward] == ["fused", "naive"]
    assert [g["connector"] for g in report.generation] == ["tome", "qformer"]
    assert all(g["mean_new_tokens"] == 4 for g in report.generation)
    printed = capsys.readouterr().out
    assert "| qformer, batch 2 | 5 |" in printed and "qformer/merged: " in printed
    assert "x the videos/s of merged (ToMe connector)" in printed
    assert "| port | 10 |" in printed and "| 1.00x |" in printed and "| batch 2 | 5 |" in printed
    assert "merged: " in printed and "x the videos/s of all" in printed and "x the videos/s of port" in printed
    assert "x the videos/s of none" in printed
    written = json.loads((tmp_path / "report.json").read_text())
    names = ["port", "all", "last3", "merged", "none"]
    assert [row["variant"] for row in written["training"]] == names + [f"qformer/{name}" for name in names]


def test_image_stage_variants_merge_or_not_and_leave_the_connector_as_it_was(capsys):
    """image (the model's r) and image_r0 train on single frames; a later variant gets the model's r back."""
    report = main(
        [
            "--tiny",
            "--variants",
            "none,image_r0,image,none",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--vit-frames",
            "0",
            "--gen-batches",
            "",
        ]
    )
    first_none, image_r0, image, last_none = report.training
    assert all(row.error is None and torch.isfinite(torch.tensor(row.loss)) for row in report.training)
    assert image_r0.tflop_per_step > image.tflop_per_step  # r = 0 carries every token through the connector
    assert last_none.tflop_per_step == first_none.tflop_per_step > image_r0.tflop_per_step  # 4 frames against 1
    assert "image stage: merging trains at" in capsys.readouterr().out
    model = tiny_captioner()
    tokens = model.vit.patch_embed.num_patches + 1
    configure(model, parse_variant("image_r0"), OPTIONS)
    assert model.connector.merge_schedule(tokens)[-1] == tokens
    configure(model, parse_variant("image"), OPTIONS)
    assert model.connector.merge_schedule(tokens)[-1] < tokens
