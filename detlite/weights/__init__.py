"""Import weights from other EfficientDet / EfficientNet checkpoints into detlite's flat dict.

    params = weights.load("tf_efficientdet_d0.pth", cfg, source="effdet")
    params = weights.load("efficientnet_b0.pth", cfg, source="torchvision", part="backbone")

Every import is: read the file, rename its keys to detlite's names (one module per source), then
merge into `model.init(cfg, seed)` after checking names and shapes against it. The check is
strict by default — any unknown, missing or mis-shaped tensor is an error that lists them all —
because a silently half-loaded detector trains and evaluates without complaint, just badly.
`strict=False` keeps the initialised value wherever the file does not fit (e.g. another class
count) and logs what it skipped.

Sources:
  effdet       effdet / timm EfficientDet state dicts (every variant; DetBench saves too)
  timm         timm EfficientNet / EfficientNet-Lite classifiers → backbone
  torchvision  torchvision efficientnet_b0 .. b7 classifiers → backbone (see from_torchvision)
  lukemelas    efficientnet_pytorch naming (`_conv_stem`, `_blocks.N...`) → backbone
  nvidia       NVIDIA DeepLearningExamples EfficientDet-PyTorch `.pth.tar` checkpoints (its own
               EfficientNet backbone; the `nvidia_*` presets), or its bare backbone
  detlite      detlite's own names (e.g. to re-head a detlite checkpoint with strict=False)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import torch
from torch import Tensor

from .. import model
from ..config import ModelConfig
from ..layers import Params
from . import from_lukemelas as lukemelas_format
from . import from_torchvision as torchvision_format
from .effdet_format import from_effdet, from_timm_backbone
from .files import WeightImportError, read_state_dict
from .from_nvidia import block_count_hint, class_head_hint, from_nvidia

Source = Literal["effdet", "timm", "torchvision", "lukemelas", "nvidia", "detlite"]
Part = Literal["all", "backbone"]
SOURCES: tuple[str, ...] = get_args(Source)
PARTS: tuple[str, ...] = get_args(Part)

logger = logging.getLogger(__name__)

# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class ImportReport:
    """What an import did: how many tensors came from the file, and what was skipped."""

    imported: int
    """Tensors of the result taken from the file."""
    initialised: int
    """Tensors of the result left at their `model.init` values (outside the part, or skipped)."""
    unknown: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    misshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    """(name, expected shape, shape in the file)."""

    @property
    def skipped(self) -> int:
        return len(self.unknown) + len(self.missing) + len(self.misshaped)

    def summary(self) -> str:
        return (
            f"imported {self.imported} tensors, skipped {self.skipped} "
            f"({len(self.missing)} missing, {len(self.misshaped)} wrong shape, "
            f"{len(self.unknown)} unknown), {self.initialised} left at their initial values"
        )


_V = TypeVar("_V")


def _strip_wrapper_prefixes(state_dict: dict[str, _V]) -> dict[str, _V]:
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


# ---------------------------------------------------------------------------------------------
# Renaming per source


def _from_effdet(state_dict: dict[str, Tensor], cfg: ModelConfig) -> tuple[Params, list[str]]:
    # A DetBenchTrain/DetBenchPredict save nests the model under `model.` next to its anchor grid,
    # which detlite computes from the config instead.
    if any(k.startswith("model.backbone.") for k in state_dict):
        state_dict = {
            k.removeprefix("model."): v
            for k, v in state_dict.items()
            if not k.startswith("anchors.")
        }
    return from_effdet(state_dict, cfg.min_level)


def rename(
    state_dict: dict[str, Tensor], cfg: ModelConfig, source: Source
) -> tuple[Params, list[str]]:
    """A foreign state dict under detlite names, and the keys the source's naming did not know."""
    state_dict = _strip_wrapper_prefixes(dict(state_dict))
    if source == "effdet":
        return _from_effdet(state_dict, cfg)
    if source == "timm":
        return from_timm_backbone(state_dict)
    if source == "torchvision":
        return torchvision_format.from_torchvision(state_dict)
    if source == "lukemelas":
        return lukemelas_format.from_lukemelas(state_dict, cfg.backbone)
    if source == "nvidia":
        return from_nvidia(state_dict, cfg)
    if source == "detlite":
        return dict(state_dict), []
    raise ValueError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")


def guess_source(keys: list[str] | set[str]) -> Source | None:
    """The source whose naming these keys look like (for error hints), or None."""
    keys = set(_strip_wrapper_prefixes(dict.fromkeys(keys)))
    # NVIDIA's BiFPN and heads have effdet's names: its backbone tells it apart.
    if any(k.startswith(("input_conv.", "mbconv_blocks.")) or ".mbconv_blocks." in k for k in keys):
        return "nvidia"
    effdet_prefixes = ("fpn.cell.", "class_net.", "model.fpn.", "backbone.conv_stem.")
    if any(k.startswith(effdet_prefixes) for k in keys):
        return "effdet"
    markers: dict[str, Source] = {
        "features.0.0.weight": "torchvision",
        "_conv_stem.weight": "lukemelas",
        "conv_stem.weight": "timm",
        "backbone.stem.conv.weight": "detlite",
    }
    for key, source in markers.items():
        if key in keys:
            return source
    return None


def _config_mismatch(source: Source, cfg: ModelConfig, renamed: Params) -> str | None:
    if source == "torchvision":
        return torchvision_format.config_mismatch(cfg.backbone, renamed)
    if source == "lukemelas":
        return lukemelas_format.config_mismatch(cfg.backbone)
    if source == "nvidia" and (cfg.backbone.tf_padding or cfg.backbone.bn_eps != 1e-3):
        return (
            "NVIDIA's backbone pads symmetrically with BatchNorm eps 1e-3, the config's backbone "
            f"({cfg.backbone.arch}) does not — the weights load, but outputs differ from NVIDIA's; "
            "choose the nvidia_* preset of the file's variant"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Checking and merging


@dataclass(frozen=True)
class _Mismatch:
    unknown: list[tuple[str, tuple[int, ...] | None]]  # (name, shape in the file if a tensor)
    missing: list[tuple[str, tuple[int, ...]]]  # (name, expected shape)
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, expected, got)

    def __bool__(self) -> bool:
        return bool(self.unknown or self.missing or self.misshaped)

    def listing(self) -> list[str]:
        lines = [f"  wrong shape  {k}: expected {w}, got {g}" for k, w, g in self.misshaped]
        lines += [f"  missing      {k}: expected {want}, got nothing" for k, want in self.missing]
        for k, got in self.unknown:
            lines.append(f"  unknown      {k}" + (f": got {got}" if got is not None else ""))
        return lines

    def counts(self) -> str:
        return (
            f"{len(self.misshaped)} wrong shape, {len(self.missing)} missing, "
            f"{len(self.unknown)} unknown"
        )


def _find_mismatch(
    wanted: Params, unknown_keys: list[str], params: Params, requested: Callable[[str], bool]
) -> _Mismatch:
    return _Mismatch(
        unknown=[(k, None) for k in unknown_keys]
        + [(k, tuple(v.shape)) for k, v in wanted.items() if k not in params],
        missing=[
            (k, tuple(v.shape)) for k, v in params.items() if requested(k) and k not in wanted
        ],
        misshaped=[
            (k, tuple(params[k].shape), tuple(v.shape))
            for k, v in wanted.items()
            if k in params and v.shape != params[k].shape
        ],
    )


def _hints(
    problems: _Mismatch,
    state_dict: Mapping[str, Tensor],
    renamed: Params,
    cfg: ModelConfig,
    source: Source,
    part: Part,
) -> list[str]:
    hints = []
    guessed = guess_source(list(state_dict))
    if guessed is not None and guessed != source:
        hints.append(f"the keys look like source={guessed!r} (CLI: --source {guessed})")
    if source == "nvidia" and (reason := block_count_hint(dict(state_dict), cfg)):
        hints.append(reason)
    if source == "nvidia" and not cfg.backbone.arch.startswith("nvidia_"):
        hints.append(
            "NVIDIA's checkpoints have its own backbone: use the nvidia_* preset of the file's "
            "variant, e.g. nvidia_efficientdet_d0 (CLI: --preset nvidia_efficientdet_d0)"
        )
    lukemelas_file = source == "lukemelas" and guessed == source
    if lukemelas_file and (
        reason := lukemelas_format.block_count_mismatch(dict(state_dict), cfg.backbone)
    ):
        hints.append(f"{reason}: choose the preset of the file's variant (CLI: --preset NAME)")
    outside = [k for k, _ in problems.missing if not k.startswith(_BACKBONE_PREFIX)]
    if part == "all" and outside and len(outside) == len(problems.missing):
        hints.append(
            "the file holds no BiFPN/head weights: pass part='backbone' (CLI: --part backbone) to "
            "import the backbone and initialise the rest"
        )
    head_misshaped = any(k.startswith("class_head.predict.") for k, _, _ in problems.misshaped)
    if head_misshaped and source == "nvidia" and (hint := class_head_hint(renamed, cfg)):
        hints.append(hint)
    elif head_misshaped:
        hints.append(
            "the class head was trained for another class count than "
            f"num_classes={cfg.num_classes}: set num_classes to match (CLI: --num-classes N), "
            "or keep a fresh class head with strict=False (CLI: --partial)"
        )
    hints.append(
        "check that the config is the file's variant (CLI: --preset NAME); strict=False "
        "(CLI: --partial) skips the tensors listed and keeps their initialised values"
    )
    return hints


def convert_with_report(
    state_dict: Mapping[str, Tensor],
    cfg: ModelConfig,
    source: Source = "effdet",
    part: Part = "all",
    *,
    strict: bool = True,
    seed: int = 0,
    origin: str = "state dict",
) -> tuple[Params, ImportReport]:
    """`convert`, also returning what was imported and skipped; `origin` names the input."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of: {', '.join(PARTS)}")
    renamed, unknown_keys = rename(dict(state_dict), cfg, source)
    params = model.init(cfg, seed)

    def requested(name: str) -> bool:
        return part == "all" or name.startswith(_BACKBONE_PREFIX)

    # Tensors outside the requested part (an effdet file's BiFPN when part="backbone") are not
    # wanted, so they are neither imported nor reported.
    wanted = {k: v for k, v in renamed.items() if requested(k)}
    problems = _find_mismatch(wanted, unknown_keys, params, requested)
    if problems:
        where = f"{origin} (source={source!r}) for config {cfg.name!r} (part={part!r})"
        if strict:
            hints = [f"hint: {h}" for h in _hints(problems, state_dict, renamed, cfg, source, part)]
            header = f"{where} does not fit: {problems.counts()}"
            raise WeightImportError("\n".join([header, *problems.listing(), *hints]))
        header = f"{where}: skipped {problems.counts()}, kept their initialised values"
        logger.warning("%s", "\n".join([header, *problems.listing()]))

    skip = {k for k, _, _ in problems.misshaped}
    imported = 0
    for name, value in wanted.items():
        if name in params and name not in skip:
            target = params[name]
            # A contiguous copy in the target's dtype: the result must not alias the caller's
            # module (BN statistics are updated in place in training), stays float32 for fp16
            # files, and has the strides a checkpoint round trip gives (reductions such as the
            # gradient-norm clip follow strides, so a resumed run only matches bit for bit so).
            params[name] = value.detach().to(
                device=target.device,
                dtype=target.dtype,
                memory_format=torch.contiguous_format,
                copy=True,
            )
            imported += 1
    if imported and (reason := _config_mismatch(source, cfg, renamed)):
        logger.warning("%s: %s", origin, reason)
    report = ImportReport(
        imported=imported,
        initialised=len(params) - imported,
        unknown=tuple(k for k, _ in problems.unknown),
        missing=tuple(k for k, _ in problems.missing),
        misshaped=tuple(problems.misshaped),
    )
    return params, report


def convert(
    state_dict: Mapping[str, Tensor],
    cfg: ModelConfig,
    source: Source = "effdet",
    part: Part = "all",
    *,
    strict: bool = True,
    seed: int = 0,
) -> Params:
    """A full parameter dict for `cfg`: the state dict's tensors (within `part`) over `model.init`.

    `part="backbone"` imports only `backbone.*` and leaves the BiFPN and heads freshly
    initialised (from `seed`). With `strict=True` any unknown, missing or mis-shaped tensor raises
    `WeightImportError` (a ValueError) listing them all; with `strict=False` they are skipped,
    keeping the initialised values, and logged at WARNING.
    """
    return convert_with_report(state_dict, cfg, source, part, strict=strict, seed=seed)[0]


def load(
    path: str | os.PathLike,
    cfg: ModelConfig,
    source: Source = "effdet",
    part: Part = "all",
    strict: bool = True,
    seed: int = 0,
    ema: bool = False,
) -> Params:
    """`convert` of the checkpoint file at `path` (see `read_state_dict` for the formats);
    `ema=True` takes a training checkpoint's EMA weights (`state_dict_ema`)."""
    state_dict = read_state_dict(path, ema=ema)
    return convert_with_report(
        state_dict, cfg, source, part, strict=strict, seed=seed, origin=str(path)
    )[0]


__all__ = [
    "PARTS",
    "SOURCES",
    "ImportReport",
    "Part",
    "Source",
    "WeightImportError",
    "convert",
    "convert_with_report",
    "guess_source",
    "load",
    "read_state_dict",
    "rename",
]
