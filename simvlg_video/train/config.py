"""`train:` of a run: the typed settings of training, with their defaults, checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """`train:` of a run. The defaults are the demo's (the tiny model on the shapes set: a constant learning rate
    after a short warm-up); each dataset's `configs/experiment/` file holds its published recipe."""

    steps: int = 1500
    batch_size: int = 16  # clips per process and micro-batch
    accumulation: int = 1  # micro-batches per optimiser step: global batch = batch_size x accumulation x processes
    strategy: str = "ddp"  # under torchrun: ddp (a replica per GPU) | fsdp (parameters sharded: models that do not fit)
    collective_timeout_min: float = 10.0  # under torchrun: how long a process waits in a collective for the others
    # before the run fails (a process that died ends the run within it); work rank 0 does alone is not limited by it
    lr: float = 1e-3
    weight_decay: float = 0.05  # AdamW; never on biases, norms, gates and code tables
    warmup_steps: int = 20
    warmup_start_lr: float = 1e-6
    min_lr: float | None = None  # cosine from lr down to this at the last step; None: lr (a constant rate)
    grad_clip: float | None = 1.0  # None: no clipping (the reference's)
    log_every: int = 10
    checkpoint_every: int = 200  # steps between checkpoints (one is also written at the end)
    keep_checkpoints: int = 2  # the newest ones kept; the best by validation (eval.best_metric) is kept as well
    eval_every: int = 0  # validate on eval.val_split every N steps (0: no validation during training)
    max_nonfinite_in_a_row: int = 5  # this many skipped (non-finite) steps in a row stop the run, saving the last
    # good state
    grad_norm_spike: float = 10.0  # warn when a logged grad norm exceeds this multiple of its running average
    dropout: float | None = None  # None: the image model's; a number sets every trainable dropout layer (0: runs on
    # any number of processes give the same losses)
    tensorboard: bool = True  # RUN_DIR/tensorboard scalars besides metrics.jsonl
    activation_checkpointing: bool = False  # recompute the ViT blocks that train in backward: less memory
    compile: bool = False  # torch.compile each ViT block (GPU runs; the first steps compile)
    trainable: list[str] = field(default_factory=lambda: ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"])
    # what trains (adapters = every temporal adapter); everything else is frozen

    def __post_init__(self) -> None:
        """Settings that cannot work together are refused before anything runs."""
        if self.steps < 1 or self.batch_size < 1 or self.accumulation < 1:
            raise ValueError(
                f"train.steps, train.batch_size and train.accumulation must be >= 1 (got {self.steps}, "
                f"{self.batch_size}, {self.accumulation})"
            )
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"train.warmup_steps ({self.warmup_steps}) must be between 0 and train.steps ({self.steps})"
            )
        if not self.collective_timeout_min > 0:
            raise ValueError(f"train.collective_timeout_min must be > 0, got {self.collective_timeout_min}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"train.strategy must be ddp or fsdp, got {self.strategy!r}")
