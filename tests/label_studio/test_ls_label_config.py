"""Reading labeling configs: Image keys, the brush tag for a prompt, its label, refusals with reasons."""

from __future__ import annotations

import pytest

from tinysam_backend.label_studio.label_config import LabelConfigError, parse_label_config

TWO_IMAGES = """<View>
  <Image name="left" value="$a"/><Image name="right" value="$b"/>
  <BrushLabels name="brush_left" toName="left"><Label value="Car"/><Label value="Tree"/></BrushLabels>
  <BrushLabels name="brush_people" toName="left,right"><Label value="Person"/></BrushLabels>
  <KeyPointLabels name="kp" toName="left" smart="true"><Label value="Tree"/><Label value="Person"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="right" smartOnly="true"><Label value="Person"/></RectangleLabels>
</View>"""


def test_recorded_config(recorded):
    config = parse_label_config(recorded["ls_1.23.2_predict_interactive"]["label_config"])
    assert config.images == {"image": "image"}
    assert [b.name for b in config.brushes] == ["tag"]
    assert config.brushes[0].labels == ("cat", "dog")
    assert [(p.name, p.type, p.smart) for p in config.prompts] == [("kp", "keypointlabels", True),
                                                                  ("rect", "rectanglelabels", True)]


def test_brush_choice_by_image_and_label():
    config = parse_label_config(TWO_IMAGES)
    assert config.images == {"left": "a", "right": "b"}
    assert config.brush_for("left").name == "brush_left"            # first brush bound to the image
    assert config.brush_for("left", "Person").name == "brush_people"  # the brush that has the prompt's label
    assert config.brush_for("right", "Car").name == "brush_people"    # only one bound to `right`
    brush = config.brush_for("left", "Tree")
    assert config.brush_label(brush, "Tree") == "Tree"
    assert config.brush_label(brush, "Unknown") == "Car"  # not a label of the brush tag: its first label
    assert config.brush_label(brush, None) == "Car"


def test_plain_brush_tag_has_no_label():
    config = parse_label_config('<View><Image name="i" value="$img"/><Brush name="b" toName="i"/></View>')
    brush = config.brush_for("i", "x")
    assert brush.type == "brush"
    assert config.brush_label(brush, "x") is None


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<View><Image", "not well-formed"),
    ("<View><Text name='t' value='$t'/></View>", "no <Image> tag"),
    ("<View><Image name='i'/></View>", "value=\"\\$key\""),
    ("<View><Image name='i' value='$i'/><BrushLabels name='b'/></View>", "toName"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View><Image name="i" value="$i"/></View>', "DOCTYPE"),
])
def test_unusable_configs_are_refused_with_reason(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_missing_brush_and_unknown_image_name_the_fix():
    config = parse_label_config('<View><Image name="i" value="$img"/></View>')
    with pytest.raises(LabelConfigError, match="no BrushLabels .* toName='i'"):
        config.brush_for("i")
    with pytest.raises(LabelConfigError, match="Image tags are \\['i'\\]"):
        config.image_key("other")


def test_non_string_config_is_refused():
    with pytest.raises(LabelConfigError, match="XML string, got dict"):
        parse_label_config({"a": 1})
