"""What a sweep's run directories hold, gathered into one small record per run for the report and its plots.

Nothing here draws or formats: `read_sweep` reads, `metric_series` picks the points the metric-vs-frames plot draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from simvlg_video.eval.runs import RunsError, adapter_label, find_runs, read_log, summary_line

# Override keys that the plot already shows as its x axis, its lines or (through adapter_label) its panel titles.
_SHOWN_KEYS = ("data.num_frames", "sampler", "adapter")


@dataclass
class RunResult:
    """One run directory: what was asked for (overrides, frames, sampler, adapter) and what came out."""

    name: str
    overrides: list[str] | None  # None: no .hydra/overrides.yaml (a run started without -m)
    num_frames: int | None
    sampler: str
    adapter: str
    summary: dict | None  # None: the run did not finish
    loss: list[tuple[int, float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def metrics(self) -> dict:
        """Scores of the trained model; empty for an unfinished run."""
        return (self.summary or {}).get("trained", {})


def loss_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) of training lines; a resume at step N drops the logged steps after N, which the run replays."""
    losses: dict[int, float] = {}
    for record in records:
        phase = record.get("phase", "train")  # older runs wrote training lines without a phase
        if phase == "resume":
            losses = {step: loss for step, loss in losses.items() if step <= record["step"]}
        elif phase == "train" and "loss" in record and "step" in record:
            losses[int(record["step"])] = float(record["loss"])  # the last line seen for a step wins
    return sorted(losses.items())


def sampler_name(cfg: DictConfig) -> str:
    """Short name of the training sampler (`uniform`, `headtail`, ...): unique among the shipped sampler configs."""
    sampler = cfg.get("sampler") or {}
    train = sampler.get("train") or {}
    name = train.get("name") or str(train.get("_target_", "?")).rsplit(".", 1)[-1]  # or as runs before names had it
    rate = train.get("rate", sampler.get("rate"))
    return f"{name} {rate}/s" if rate is not None else name


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RunsError(f"{path}: not valid YAML ({err})") from None


def read_run(run_dir: Path, name: str) -> RunResult:
    """One run directory as a RunResult; a missing metrics.jsonl is an unfinished run."""
    cfg = OmegaConf.create(_load_yaml(run_dir / "config.yaml") or {})
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in _load_yaml(overrides_file) or []] if overrides_file.is_file() else None
    log = run_dir / "metrics.jsonl"
    records = read_log(log) if log.is_file() else []
    frames = (cfg.get("data") or {}).get("num_frames")
    return RunResult(
        name=name,
        overrides=overrides,
        num_frames=None if frames is None else int(frames),
        sampler=sampler_name(cfg),
        adapter=adapter_label(cfg),
        summary=summary_line(records),
        loss=loss_curve(records),
    )


def read_sweep(path: Path) -> list[RunResult]:
    """Every run below PATH (or PATH itself when it is a run), in job order, named by their folder under PATH."""
    return [
        read_run(run_dir, run_dir.relative_to(path).as_posix() if run_dir != path else path.name)
        for run_dir in find_runs([path])
    ]


def _shown(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return any(key == shown or key.startswith(shown + ".") for shown in _SHOWN_KEYS)


def common_overrides(runs: list[RunResult]) -> list[str]:
    """Overrides every run of the sweep was given (in the first run's order): said once, not on every row."""
    given = [run.overrides or [] for run in runs]
    shared = set.intersection(*map(set, given)) if len(given) > 1 else set()
    return [o for o in given[0] if o in shared] if given else []


def own_overrides(run: RunResult, common: list[str]) -> str:
    """What sets this run apart from the others of its sweep ("-" when nothing does)."""
    own = [o for o in run.overrides or [] if o not in common]
    return " ".join(own) if own else "-"


def panel_labels(runs: list[RunResult]) -> list[str]:
    """Per run, the settings that vary besides frames and sampler: its adapter plus overrides not shared by all runs."""
    others = [[o for o in run.overrides or [] if not _shown(o)] for run in runs]
    common = set.intersection(*map(set, others)) if others else set()
    return [" ".join([run.adapter, *(o for o in extra if o not in common)]) for run, extra in zip(runs, others)]


def metric_series(runs: list[RunResult], metric: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(panel, sampler): [(frames, 100 * metric), ...]} sorted by frames: the points the plot draws.

    Unfinished runs, runs without data.num_frames and missing or NaN scores have no point.
    """
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for run, panel in zip(runs, panel_labels(runs)):
        value = run.metrics.get(metric)
        if run.num_frames is None or value is None or not math.isfinite(value):
            continue
        series.setdefault((panel, run.sampler), []).append((run.num_frames, 100 * value))
    return {key: sorted(points) for key, points in series.items()}
