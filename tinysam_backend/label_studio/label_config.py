"""Reading a Label Studio labeling config: which Image tags there are, which BrushLabels tag a mask goes to, and
which smart KeyPointLabels / RectangleLabels tags carry prompts.

Pure functions over the XML text; no Label Studio import. Entity declarations are refused outright (the config
comes over HTTP), and the XML is parsed with the standard library, which resolves no external entities.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import TinySAMError

# Result types Label Studio writes for each control tag.
BRUSH_TAGS = {"brushlabels": "brushlabels", "brush": "brush"}
PROMPT_TAGS = {"keypointlabels": "keypointlabels", "keypoint": "keypoint",
               "rectanglelabels": "rectanglelabels", "rectangle": "rectangle"}
MAX_CONFIG_CHARS = 1_000_000


class LabelConfigError(TinySAMError, ValueError):
    """The labeling config is not usable for segmentation (unparseable, no Image, no brush tag…)."""


@dataclass(frozen=True)
class ControlTag:
    """A control tag: `name`, the Image tags it labels (`to_names`), its result `type` and its labels."""

    name: str
    to_names: tuple[str, ...]
    type: str
    labels: tuple[str, ...] = ()
    smart: bool = False


@dataclass(frozen=True)
class LabelConfig:
    """images: Image tag name → task data key (the `$image` in `value="$image"`, without `$`)."""

    images: dict[str, str]
    brushes: tuple[ControlTag, ...]
    prompts: tuple[ControlTag, ...]

    def image_key(self, to_name: str) -> str:
        if to_name not in self.images:
            raise LabelConfigError(f"region points at Image tag {to_name!r}, but the labeling config's Image tags "
                                   f"are {sorted(self.images)}")
        return self.images[to_name]

    def brush_for(self, to_name: str, label: str | None = None) -> ControlTag:
        """The brush tag bound to Image `to_name`: the one whose labels include `label` if any, else the first."""
        bound = [b for b in self.brushes if to_name in b.to_names]
        if not bound:
            raise LabelConfigError(
                f"the labeling config has no BrushLabels (or Brush) tag with toName={to_name!r}; TinySAM answers with "
                f"brush masks, so add e.g. <BrushLabels name=\"tag\" toName=\"{to_name}\"><Label value=\"Object\"/>"
                "</BrushLabels>")
        if label is not None:
            for b in bound:
                if label in b.labels:
                    return b
        return bound[0]

    def brush_label(self, brush: ControlTag, label: str | None) -> str | None:
        """The label written on the mask: the prompt's label when the brush tag has it, else its first label."""
        if brush.type != "brushlabels":
            return None
        if label is not None and label in brush.labels:
            return label
        return brush.labels[0] if brush.labels else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def parse_label_config(xml: str) -> LabelConfig:
    """Labeling config XML → `LabelConfig`. Raises LabelConfigError with what was expected."""
    if not isinstance(xml, str):
        raise LabelConfigError(f"label_config must be an XML string, got {type(xml).__name__}")
    if not xml.strip():
        raise LabelConfigError("label_config is empty; expected the project's labeling config XML")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label_config is {len(xml)} characters, more than the limit of {MAX_CONFIG_CHARS}")
    return _parse_cached(xml)


@functools.lru_cache(maxsize=64)
def _parse_cached(xml: str) -> LabelConfig:
    upper = xml.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise LabelConfigError("label_config with a DOCTYPE or ENTITY declaration is refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"label_config is not well-formed XML: {e}") from e
    images: dict[str, str] = {}
    brushes: list[ControlTag] = []
    prompts: list[ControlTag] = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        kind = _local(el.tag)
        name = el.get("name")
        if kind == "image":
            value = el.get("value") or el.get("valueList") or ""
            if not name or not value.startswith("$") or len(value) < 2:
                raise LabelConfigError(f"<Image> needs name and value=\"$key\", got name={name!r} value={value!r}")
            images[name] = value[1:]
        elif kind in BRUSH_TAGS or kind in PROMPT_TAGS:
            to_name = el.get("toName") or el.get("toname") or ""
            if not name or not to_name:
                raise LabelConfigError(f"<{el.tag}> needs name and toName, got name={name!r} toName={to_name!r}")
            labels = tuple(lab.get("value") or lab.get("alias") or "" for lab in el
                           if isinstance(lab.tag, str) and _local(lab.tag) == "label")
            tag = ControlTag(name=name, to_names=tuple(t.strip() for t in to_name.split(",") if t.strip()),
                             type=BRUSH_TAGS.get(kind) or PROMPT_TAGS[kind], labels=labels,
                             smart=_truthy(el.get("smart")) or _truthy(el.get("smartOnly")))
            (brushes if kind in BRUSH_TAGS else prompts).append(tag)
    if not images:
        raise LabelConfigError("the labeling config has no <Image> tag; TinySAM segments images")
    return LabelConfig(images=images, brushes=tuple(brushes), prompts=tuple(prompts))
