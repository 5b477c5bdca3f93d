"""Segment-everything's parameters, written once: names, defaults, ranges and help text.

Every front end is built from `EverythingParams`: the library's keyword arguments (`segment_everything`), the
flags of `tinysam everything` (`--points-per-side` …), Label Studio's `TINYSAM_LS_BATCH_<NAME>` variables and the
FiftyOne auto-mask form and keywords. A value out of range is refused here, with one message wherever it came from.
Pure Python (no numpy, no torch), so settings modules can import it at start-up.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields

MODES = ("hierarchical", "dense")
DECODERS = ("auto", "fast", "model")
# The first round of the hierarchical mode is a (points_per_side // 4)² grid: at least one point.
HIERARCHICAL_MIN_POINTS_PER_SIDE = 4


def _param(default, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class Parameter:
    """One field of `EverythingParams` as a front end shows it: kind is int, float or str (then `choices`)."""

    name: str
    kind: type
    default: int | float | str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. `--points-per-side`."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> int | float | str:
        """A value written as text (an environment variable, a form) → its kind; the range is checked by
        `EverythingParams`. Raises ValueError naming the expected kind."""
        raw = text.strip()
        if self.choices is not None:
            return raw.lower()
        try:
            return self.kind(raw)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise ValueError(f"{self.name} must be {what}, got {text!r}") from None


@dataclass(frozen=True)
class EverythingParams:
    """Parameters of segment-everything (the same names in the API, the CLI, Label Studio and FiftyOne).

    Each field's help text is its documentation; `EverythingParams.parameters()` lists them with their kinds and
    ranges. Bad values raise ValueError naming the field, the expected range and the value received.
    """

    mode: str = _param("hierarchical", "hierarchical: TinySAM's two-round strategy (paper §3.4); dense: SAM's full "
                       "grid", choices=MODES)
    points_per_side: int = _param(32, "Points per side of the grid (hierarchical: the first round uses a quarter, so "
                                  f"at least {HIERARCHICAL_MIN_POINTS_PER_SIDE})", low=1)
    pred_iou_thresh: float = _param(0.88, "Keep masks whose predicted IoU is above this (≤ 1; 0 or less: no filter)",
                                    high=1.0)
    stability_score_thresh: float = _param(0.95, "Keep masks whose stability score is at least this (≤ 1; 0 or "
                                           "less: no filter)", high=1.0)
    stability_score_offset: float = _param(1.0, "Logit offset of the stability score (IoU of the masks at "
                                           "threshold ± offset)")
    high_score_thresh: float = _param(8.5, "Logit above which a first-round pixel needs no second-round point "
                                      "(hierarchical)")
    box_nms_thresh: float = _param(0.7, "Box IoU above which the lower-scored mask is dropped (1.0: keep all)",
                                   low=0.0, high=1.0)
    min_mask_region_area: int = _param(0, "Fill holes / drop islands smaller than this many pixels (0: off)", low=0)
    points_per_batch: int = _param(16, "Prompts decoded at once (memory vs speed)", low=1)
    decoder: str = _param("auto", "fast: low-rank batched decoder (fp32 Sam only); model: model.decode (any model); "
                          "auto: fast when the model allows it", choices=DECODERS)

    def __post_init__(self) -> None:
        for p in self.parameters():
            _check(p, getattr(self, p.name))
        if self.mode == "hierarchical" and self.points_per_side < HIERARCHICAL_MIN_POINTS_PER_SIDE:
            raise ValueError(f"points_per_side must be an integer >= {HIERARCHICAL_MIN_POINTS_PER_SIDE} in "
                             f"hierarchical mode, got {self.points_per_side!r}")

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        """Every field with its kind, default, help text and range, in declaration order."""
        return tuple(Parameter(f.name, type(f.default), f.default, f.metadata["help"], f.metadata["low"],
                               f.metadata["high"], f.metadata["choices"]) for f in fields(cls))

    @classmethod
    def from_overrides(cls, **overrides) -> EverythingParams:
        """The defaults with some fields replaced; unknown names are refused (ValueError) with the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown segment-everything parameters {unknown}; expected some of {sorted(known)}")
        return cls(**overrides)


def _check(p: Parameter, value) -> None:
    if p.choices is not None:
        if value not in p.choices:
            raise ValueError(f"{p.name} must be one of {p.choices}, got {value!r}")
        return
    if p.kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not ok or (p.low is not None and value < p.low):
            bound = "" if p.low is None else f" >= {p.low}"
            raise ValueError(f"{p.name} must be an integer{bound}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{p.name} must be a finite number, got {value!r}")
    if (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
        low = "-inf" if p.low is None else p.low
        high = "inf" if p.high is None else p.high
        raise ValueError(f"{p.name} must be in [{low}, {high}], got {value!r}")
