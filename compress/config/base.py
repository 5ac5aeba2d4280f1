"""Config blocks shared by several stages: data, model and training settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.registry import DATASETS, MODEL_SOURCES, MODELS, Registry, split_arch


class StrictModel(BaseModel):
    """Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


@dataclass(frozen=True)
class NameIn:
    """Marks a string field whose value is a name in ``registry`` (the reference lists them)."""

    registry: Registry[Any]

    def __call__(self, value: str) -> str:
        if value not in self.registry:
            raise ValueError(self.registry.unknown_message(value))
        return value


def registered(registry: Registry[Any]) -> Any:
    """``str`` restricted to the names registered in ``registry`` when the config validates, so
    an entry registered by a new file is valid at once."""
    return Annotated[str, AfterValidator(NameIn(registry)), NameIn(registry)]


Dataset = registered(DATASETS)


class DataConfig(StrictModel):
    """Which images, how they are prepared, and how they are batched."""

    dataset: Dataset = Field("fashion-mnist", description="registered dataset name")
    root: Path | None = Field(
        None, description="folder holding the dataset; default: search the usual places"
    )
    download: bool = Field(True, description="download with torchvision when not found locally")
    image_size: int | None = Field(
        None, ge=8, le=1024, description="square input size; default: the dataset's own"
    )
    channels: Literal[1, 3] | None = Field(
        None, description="input channels; default: the dataset's own (1 for Fashion-MNIST)"
    )
    mean: list[float] | None = Field(None, description="per-channel mean; default: dataset's")
    std: list[float] | None = Field(None, description="per-channel std; default: dataset's")
    train_subset: int | None = Field(None, ge=1, description="use only N training images")
    labels_per_class: int | None = Field(
        None,
        ge=1,
        description="keep N labelled training images per class (a stratified draw fixed by the "
        "pipeline seed, from the train_subset pool if set; val_split carved from them)",
    )
    test_subset: int | None = Field(None, ge=1, description="use only N test images")
    val_split: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of training images held out for validation"
    )
    batch_size: int = Field(128, ge=1, description="training batch size; stages can override")
    eval_batch_size: int = Field(500, ge=1, description="batch size for evaluation and predictions")
    workers: int = Field(0, ge=0, description="decoding processes for image files")
    cache: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: decode once into RAM; stream: decode every epoch"
    )
    skip_corrupt: bool = Field(
        False,
        description="image files that do not decode are skipped and counted (default: an error "
        "naming the file)",
    )
    unlabeled: Literal["rest"] | Path | None = Field(
        None,
        description="folder of extra unlabeled images (searched recursively), or rest: the "
        "training images left out by labels_per_class / train_subset, labels dropped; "
        "distilling stages add them to each step with the teacher's soft targets only",
    )
    unlabeled_batch_size: int | None = Field(
        None, ge=1, description="unlabeled images per step; default: the stage's batch size"
    )

    @field_validator("unlabeled")
    @classmethod
    def _unlabeled_folder(cls, value: Path | str | None) -> Path | str | None:
        if isinstance(value, Path) and not value.is_dir():
            raise ValueError(f"no such folder: {value}")
        return value

    @model_validator(mode="after")
    def _norm_lengths(self) -> DataConfig:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"{key} has {len(values)} values but channels is {self.channels}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.unlabeled == "rest" and not (self.labels_per_class or self.train_subset):
            raise ValueError(
                "unlabeled: rest needs labels_per_class or train_subset (the rest of the "
                "training split becomes the unlabeled images)"
            )
        return self


class ModelConfig(StrictModel):
    """An architecture (built-in, torchvision, timm or the user's factory), adapted to the data."""

    arch: str = Field(
        "mobilenet_v2",
        description="built-in name, torchvision:NAME, timm:NAME, python:MODULE_OR_FILE.py:FACTORY",
    )
    width_mult: float = Field(
        1.0, gt=0.0, le=4.0, description="channel width multiplier (built-ins; else use kwargs)"
    )
    stem: Literal["auto", "imagenet", "cifar", "compact"] = Field(
        "auto",
        description=(
            "imagenet: the model's own stem (stride 4: 7x7/2 + pool for ResNets); cifar: first "
            "conv stride 1, no stem pool, for small images; compact: 3x3/2 (built-ins) or no stem "
            "pool (others); auto: cifar below 64 px"
        ),
    )
    weights: str | None = Field(
        None,
        description="start from these weights: a torchvision weights name (IMAGENET1K_V1, "
        "DEFAULT) or a state_dict file in the library's (or the adapted model's) layout",
    )
    pretrained: bool = Field(False, description="timm: start from timm's pretrained weights")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="arguments of the torchvision/timm/python builder"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        prefix, name = split_arch(value)
        if prefix not in MODEL_SOURCES:
            raise ValueError(MODEL_SOURCES.unknown_message(prefix))
        source = MODEL_SOURCES.get(prefix)
        if prefix != "python":  # a factory is checked with its kwargs below
            source.check(name, {})
        return source.canonical(name)

    @model_validator(mode="after")
    def _source_settings(self) -> ModelConfig:
        prefix, name = split_arch(self.arch)
        if self.kwargs or prefix == "python":
            MODEL_SOURCES.get(prefix).check(name, self.kwargs)
        fixed_width = prefix == "builtin" and getattr(MODELS.get(name), "fixed_width", False)
        if fixed_width and self.width_mult != 1.0:
            raise ValueError(f"{self.arch} has a fixed width: width_mult must be 1.0")
        if prefix != "builtin" and self.width_mult != 1.0:
            raise ValueError(f"{self.arch}: width_mult is for built-ins; pass kwargs instead")
        if self.pretrained and prefix != "timm":
            raise ValueError(f"pretrained: true is timm's switch; for {self.arch} use weights:")
        if self.pretrained and self.weights is not None:
            raise ValueError("set pretrained or weights, not both")
        if self.weights is not None:
            self._check_weights(prefix, name)
        return self

    def _check_weights(self, prefix: str, name: str) -> None:
        MODEL_SOURCES.get(prefix).check_weights(name, self.kwargs, self.weights or "")

    def library_weights(self) -> str | bool | None:
        """What the stage passes to build_model: a name, a file, timm's flag, or nothing."""
        return self.weights or (True if self.pretrained else None)


class TrainConfig(StrictModel):
    """Optimisation settings shared by every stage that trains."""

    epochs: int = Field(10, ge=0, description="passes over the training split")
    steps: int | None = Field(
        None,
        ge=1,
        description="train for exactly N optimizer steps instead of epochs (the schedule spans "
        "them): equal budgets whatever the split's size",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="images per step per process (default: data.batch_size); under torchrun "
        "the global batch is batch_size x processes",
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd (with momentum, nesterov) or adamw"
    )
    lr: float = Field(0.1, gt=0.0, description="peak learning rate (for one process)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="under torchrun with N processes: lr x N (linear), x sqrt(N), or unchanged",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum")
    nesterov: bool = Field(True, description="sgd with Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0.0, description="L2 penalty (decoupled for adamw)")
    schedule: Literal["cosine", "onecycle", "step", "constant"] = Field(
        "cosine",
        description="learning-rate schedule; onecycle warms up over 15%; step uses step_milestones",
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up, in epochs")
    step_milestones: list[int] = Field(default_factory=list, description="epochs, for step")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0, description="lr factor at each milestone")
    augment: Literal["none", "flip", "standard"] = Field(
        "standard", description="none; flip (horizontal); standard (pad-and-crop + flip)"
    )
    select: Literal["last", "best_val"] = Field(
        "last", description="which epoch's weights to keep; best_val needs data.val_split > 0"
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint mid-epoch every N steps (epoch ends always)"
    )
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="on a NaN/Inf loss: stop (keep last checkpoint) or skip the batch"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast dtype of the forward pass; fp16 (with a gradient scaler) needs "
        "a GPU, bf16 also runs on CPU",
    )
    channels_last: bool = Field(
        True, description="NHWC memory format for model and batches (faster convolutions)"
    )
    compile: bool = Field(
        False,
        description="torch.compile the model's training forward and backward: fused kernels, "
        "for GPUs where small models wait on kernel launches; the first steps pay the compile "
        "(measured on a CPU: no faster)",
        json_schema_extra={"fingerprint": "omit-default"},
    )
    clip_grad_norm: float | None = Field(
        None,
        gt=0.0,
        description="clip the model's gradient norm (and, separately, the loss module's: "
        "peers, heads) to this; default: no clipping",
    )

    @model_validator(mode="after")
    def _schedule_fields(self) -> TrainConfig:
        if self.schedule == "step" and not self.step_milestones:
            raise ValueError("schedule 'step' needs step_milestones, e.g. [30, 60]")
        return self


class StageConfig(StrictModel):
    """The keys every stage has; each stage type's config extends it."""

    type: str = Field(description="registered stage type; two stages of one type need it")
    input: str | None = Field(
        None, description="stage whose output this stage takes; default: nearest earlier one"
    )
    data: DataConfig | None = Field(
        None,
        description="this stage's own data block instead of the pipeline's (grid.datasets sets it)",
    )
