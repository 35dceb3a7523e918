"""The speed readout reads every stage of the video side, and the gated attention is what the pool adds to its start."""

from __future__ import annotations

from pathlib import Path

import torch

from simvlg_video.adapters.placements import MergedTokens
from simvlg_video.data.clips import FrameReading
from simvlg_video.data.manifest import read_manifest
from simvlg_video.data.samplers import Uniform
from simvlg_video.data_tools.make_events import make_events_dataset
from simvlg_video.eval.inference import EvalSampler, InferenceConfig, OpenedModel
from simvlg_video.eval.speed_readout import STAGES, stage_features
from simvlg_video.formats.model_dir import load_model_dir


def test_every_stage_is_read_with_its_width(tiny_model_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, cfg = load_model_dir(tiny_model_dir)
    MergedTokens(num_heads=4).apply(model)
    torch.nn.init.normal_(model.time_pool.out.weight)  # an open gate
    model.eval()
    records = read_manifest(
        make_events_dataset(tmp_path, num_clips=3, kinds=["speed"], height=64, width=64, show_progress=False)
    )
    inference = InferenceConfig(data=FrameReading(num_frames=4, num_workers=0), sampler=EvalSampler(eval=Uniform()))
    features = stage_features(OpenedModel(model, cfg, inference, tiny_model_dir), records)
    tokens, width = 17, model.connector_width  # the tiny connector: 65 -> 17 tokens
    assert list(features) == list(STAGES)
    widths = {name: value.shape for name, value in features.items()}
    assert widths == {
        "frame tokens": (3, 4 * tokens * width),
        "frame average": (3, tokens * width),
        "clip view": (3, tokens * width),
        "gated attention": (3, tokens * width),
        "soft prompt": (3, tokens * model.opt_proj.out_features),
    }
    # the soft prompt is the clip view plus the gated attention, projected
    start_plus_gate = torch.from_numpy(features["clip view"] + features["gated attention"]).view(3, tokens, width)
    expected = model.opt_proj(start_plus_gate).detach().flatten(1).numpy()
    assert abs(expected - features["soft prompt"]).max() < 1e-4
