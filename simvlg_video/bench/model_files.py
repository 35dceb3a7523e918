"""Cost of the model files at full size: importing a reference checkpoint as a model directory, and loading it.

    python -m simvlg_video.bench.model_files --work DIR [--keep] [--json OUT]
    python -m simvlg_video.bench.model_files --source blip2 --work DIR   # a Hugging Face BLIP-2 OPT-2.7B folder

DIR may hold other files: the benchmark lists what it writes there (DIR/.model_files_bench.json), reuses those
files on the next run, refuses to write over anything else, and removes only what it wrote (unless --keep).

Writes random-weight files of the real sizes into DIR (BLIP-2's EVA ViT-g state dict with its 40 blocks in fp16,
an OPT-2.7B Hugging Face folder in fp16 shards, the reference's training checkpoint with its trainable tensors and
optimiser state), then times in fresh processes, one after the other:

* the import (`python -m simvlg_video.formats.lavis_checkpoint ...`): checks names and shapes, copies the checkpoint's
  tensors, fingerprints the frozen files;
* loading the model directory it wrote in bf16, as a `precision=bf16` run does (frozen parts straight into bf16).

With `--source blip2` the file is one Hugging Face BLIP-2 OPT-2.7B folder (`Blip2ForConditionalGeneration`'s
tensors in fp16 shards, its config and a tokenizer), imported with `python -m simvlg_video.formats.blip2_checkpoint`;
the model directory then points at the folder for the ViT and the LLM.

Each row: wall seconds and the process's peak resident memory (the kernel's high-water mark, file pages it mapped
included, the child's own: not the forking parent's). Values of the weights do not matter to either cost, only their
sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    OPTForCausalLM,
)

from simvlg_video.formats.lavis_checkpoint import load_model_config, reference_name
from simvlg_video.formats.model_dir import build_captioner, stored_tensors
from simvlg_video.model.lm import build_word_tokenizer
from simvlg_video.model.vit import build_vit

OPT_2_7B = dict(
    hidden_size=2560,
    num_hidden_layers=32,
    num_attention_heads=32,
    ffn_dim=10240,
    vocab_size=50272,
    max_position_embeddings=2048,
    word_embed_proj_dim=2560,
)
SHARD_BYTES = 2 * 2**30  # the LLM's safetensors shards, as Hugging Face splits them
# --tiny: the same files at toy sizes (the test suite runs it)
TINY_OPT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    ffn_dim=64,
    vocab_size=300,
    max_position_embeddings=64,
    word_embed_proj_dim=32,
)
TINY_MODEL = """vit: {preset: tiny, overrides: {img_size: 32, embed_dim: 32, depth: 3}}
connector: {hidden_size: 32, num_layers: 2, num_heads: 4, intermediate_size: 64, max_position_embeddings: 64, r: 4}
image_size: 32
"""


TINY_BLIP2 = dict(
    vision=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    ),
    qformer=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    queries=4,
)
BLIP2_OPT_2_7B = dict(vision={}, qformer={}, queries=32)  # Blip2VisionConfig's and Blip2QFormerConfig's defaults


class WorkFolder:
    """The --work folder and what the benchmark wrote into it, listed in the folder itself so that a later run
    reuses those files (after --keep) and the cleanup removes them and nothing else."""

    LISTING = ".model_files_bench.json"
    NAMES = frozenset({"eva_vit_g.pth", "opt-2.7b", "simvlg_image.pth", "tiny_model.yaml", "blip2-opt-2.7b", "model"})

    def __init__(self, path: Path):
        self.path = path
        self.made_by_us = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        listing = path / self.LISTING
        self.written: dict[str, bool] = {}
        if listing.is_file():
            try:
                self.written = json.loads(listing.read_text())
            except ValueError as error:
                raise ValueError(f"{listing} is damaged ({error}); remove it and what the benchmark wrote") from None
            if not isinstance(self.written, dict) or not set(self.written) <= self.NAMES:
                raise ValueError(f"{listing} is not the benchmark's list of its files; remove it")

    def finished(self, name: str) -> bool:
        """Whether DIR/name was written whole by this benchmark (a run before this one, with --keep)."""
        return self.written.get(name) is True and (self.path / name).exists()

    def claim(self, name: str) -> Path:
        """DIR/name, for the benchmark to write; refused when something the benchmark did not write is there."""
        target = self.path / name
        if target.exists() and name not in self.written:
            raise ValueError(f"{target} exists and was not written by this benchmark; give another --work folder")
        _remove(target)
        self._record(name, False)
        return target

    def done(self, *names: str) -> None:
        for name in names:
            self._record(name, True)

    def clean(self) -> None:
        """Remove what the benchmark wrote (and DIR, when the benchmark made it and nothing else is left)."""
        for name in self.written:
            _remove(self.path / name)
        (self.path / self.LISTING).unlink(missing_ok=True)
        if self.made_by_us and not any(self.path.iterdir()):
            self.path.rmdir()

    def _record(self, name: str, whole: bool) -> None:
        self.written[name] = whole
        (self.path / self.LISTING).write_text(json.dumps(self.written, indent=1) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _random_like(meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(meta.shape, dtype=torch.float32).to(dtype)


def write_sharded(folder: Path, names: dict[str, torch.Tensor], fill) -> None:
    """fp16 safetensors shards of at most SHARD_BYTES with their index, each tensor made by `fill(name, meta)`."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, meta in names.items():
        if sum(t.numel() * 2 for t in shards[-1].values()) + meta.numel() * 2 > SHARD_BYTES:
            shards.append({})
        shards[-1][name] = fill(name, meta)
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard.clear()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_vit_file(path: Path, model_config: str) -> Path:
    """BLIP-2's eva_vit_g.pth: the ViT with one block more than the captioner uses (EVA-g's 40th), fp16."""
    cfg = load_model_config(model_config)
    with torch.device("meta"):
        vit = build_vit(
            cfg.vit.preset,
            **{**cfg.vit.overrides, "depth": len(build_vit(cfg.vit.preset, **cfg.vit.overrides).blocks) + 1},
        )
    torch.save({name: _random_like(t, torch.float16) for name, t in vit.state_dict().items()}, path)
    return path


def write_lm_folder(folder: Path, sizes: dict) -> Path:
    """An OPT folder (OPT-2.7B's sizes): config.json, a tokenizer, fp16 weights in shards with their index."""
    folder.mkdir(parents=True)
    tokenizer = build_word_tokenizer(["a caption"])
    tokenizer.save_pretrained(folder)
    config = OPTConfig(
        **sizes,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="float16",
    )
    config.save_pretrained(folder)
    with torch.device("meta"):
        names = {name: t for name, t in OPTForCausalLM(config).state_dict().items() if name != "lm_head.weight"}
    write_sharded(folder, names, lambda name, meta: _random_like(meta, torch.float16))
    return folder


def write_blip2_folder(folder: Path, sizes: dict, opt: dict) -> Path:
    """A Hugging Face BLIP-2 OPT folder: config.json, a tokenizer, every tensor of `Blip2ForConditionalGeneration`
    in fp16 shards (the tied output head left out, as save_pretrained does; the vision qkv biases' k part zero)."""
    folder.mkdir(parents=True)
    tokenizer = build_word_tokenizer(["a caption"])
    tokenizer.save_pretrained(folder)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**sizes["vision"]),
        qformer_config=Blip2QFormerConfig(**sizes["qformer"]),
        text_config=OPTConfig(
            **opt,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        num_query_tokens=sizes["queries"],
        image_token_index=opt["vocab_size"] - 1,
        torch_dtype="float16",
    )
    config.save_pretrained(folder)
    with torch.device("meta"):
        names = {
            name: t
            for name, t in Blip2ForConditionalGeneration(config).state_dict().items()
            if name != "language_model.lm_head.weight"
        }

    def fill(name: str, meta: torch.Tensor) -> torch.Tensor:
        tensor = _random_like(meta, torch.float16)
        if name.endswith("self_attn.qkv.bias"):
            tensor.view(3, -1)[1] = 0
        return tensor

    write_sharded(folder, names, fill)
    return folder


def write_reference_checkpoint(path: Path, lm_folder: Path, model_config: str) -> Path:
    """The reference's training checkpoint: every trainable tensor (fp32) under its names, and AdamW's state."""
    cfg = load_model_config(model_config)
    cfg.lm.path = str(lm_folder)
    tensors = stored_tensors(build_captioner(cfg, path.parent, meta=True), cfg)
    model = {
        reference_name(name): _random_like(t, torch.float32)
        for name, t in tensors.items()
        if not name.startswith("vit.")
    }
    state = {
        index: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
        for index, t in enumerate(model.values())
    }
    torch.save({"model": model, "optimizer": {"state": state, "param_groups": []}, "iters": 250000}, path)
    return path


# Runs the measured code in a fresh interpreter and writes its own high-water mark (VmHWM) at exit. The kernel's
# ru_maxrss is no use here: exec keeps the forking parent's peak in it, so a child would report this script's size.
_PEAK_WRAPPER = """
import atexit, os, runpy, sys
def report_peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["SIMVLG_PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(report_peak)
kind, target, *sys.argv[1:] = sys.argv[1:]
exec(target) if kind == "-c" else runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def timed(kind: str, target: str, *args: str) -> dict:
    """Wall seconds and peak resident memory (GiB) of `python -m target args` (kind "-m") or `python -c target`."""
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak_kib"
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, kind, target, *args],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "SIMVLG_PEAK_FILE": str(peak_file)},
        )
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"error: {kind} {target} {' '.join(args)} failed:\n{errors.read().decode()[-3000:]}")
        peak_gib = int(peak_file.read_text()) / 2**20
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the files (about 9 GB; blip2: 7.5 GB)")
    parser.add_argument(
        "--source",
        choices=("simvlg", "blip2"),
        default="simvlg",
        help="the reference's three files, or a Hugging Face BLIP-2 OPT-2.7B folder",
    )
    parser.add_argument("--only", choices=("import", "load"), help="measure one of the two commands")
    parser.add_argument("--keep", action="store_true", help="keep the files for another run")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the code path, not the cost)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        work = WorkFolder(args.work)
        if args.source == "blip2":
            return blip2_figures(args, work)
        return reference_figures(args, work)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def reference_figures(args: argparse.Namespace, work: WorkFolder) -> dict:
    """The reference's three files (SimVLG's checkpoint, the EVA ViT-g weights, OPT-2.7B), imported, then loaded."""
    names = ["eva_vit_g.pth", "opt-2.7b", "simvlg_image.pth"] + (["tiny_model.yaml"] if args.tiny else [])
    vit, lm, ckpt = (work.path / name for name in names[:3])
    model_config = str(work.path / "tiny_model.yaml") if args.tiny else "simvlg_opt2.7b"
    if not all(work.finished(name) for name in names):
        for name in names:
            work.claim(name)
        print("writing random-weight files ...", flush=True)
        if args.tiny:
            Path(model_config).write_text(TINY_MODEL)
        write_vit_file(vit, model_config)
        write_lm_folder(lm, TINY_OPT if args.tiny else OPT_2_7B)
        write_reference_checkpoint(ckpt, lm, model_config)
        work.done(*names)
    sizes = {
        p.name: round(sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))) / 2**30, 2)
        for p in (vit, lm, ckpt)
    }
    figures: dict = {"files_gib": sizes, "cpu_threads": torch.get_num_threads()}
    out = work.path / "model"
    if args.only in (None, "import"):
        work.claim("model")
        figures["import"] = timed(
            "-m",
            "simvlg_video.formats.lavis_checkpoint",
            str(ckpt),
            "--vit-weights",
            str(vit),
            "--lm-path",
            str(lm),
            "--out",
            str(out),
            "--model-config",
            model_config,
        )
        work.done("model")
    return finish(args, work, figures, out)


def finish(args: argparse.Namespace, work: WorkFolder, figures: dict, out: Path) -> dict:
    """Time the load of the imported model directory `out` in bf16, then report (and clean up unless --keep)."""
    if args.only in (None, "load") and work.finished(out.name):
        load = (
            f"import torch; from simvlg_video.formats.model_dir import load_model_dir; "
            f"load_model_dir({str(out)!r}, dtype=torch.bfloat16)"
        )
        figures["load_bf16"] = timed("-c", load)
    if not args.keep:
        work.clean()
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def blip2_figures(args: argparse.Namespace, work: WorkFolder) -> dict:
    """--source blip2: a Hugging Face BLIP-2 OPT-2.7B folder, imported, then loaded."""
    folder, out = work.path / "blip2-opt-2.7b", work.path / "model"
    if not work.finished(folder.name):
        work.claim(folder.name)
        print("writing a random-weight BLIP-2 folder ...", flush=True)
        write_blip2_folder(folder, TINY_BLIP2 if args.tiny else BLIP2_OPT_2_7B, TINY_OPT if args.tiny else OPT_2_7B)
        work.done(folder.name)
    size = sum(f.stat().st_size for f in folder.rglob("*")) / 2**30
    figures: dict = {"files_gib": {folder.name: round(size, 2)}, "cpu_threads": torch.get_num_threads()}
    if args.only in (None, "import"):
        work.claim(out.name)
        figures["import"] = timed("-m", "simvlg_video.formats.blip2_checkpoint", str(folder), "--out", str(out))
        work.done(out.name)
    return finish(args, work, figures, out)


if __name__ == "__main__":
    main()
