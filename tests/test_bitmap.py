"""Bit map JSON: round trip, tied modules, and clear refusals of maps that do not fit."""

import json

import pytest
from helpers import tiny_layer_map

from emq.allocation import load_bitmap, save_bitmap
from emq.api import layers
from emq.errors import EmqError

DEFAULT = layers("default")


def test_round_trip_keyed_by_module_with_ties(tmp_path):
    bits = [8, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3, 4, 8]
    doc = save_bitmap(tmp_path / "m.json", DEFAULT, bits, act_bits=6, provenance={"proxy": "p.json"})
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert on_disk == doc and doc["format"] == "emq-bitmap/1" and doc["model"] == "default"
    assert len(doc["modules"]) == 22 and doc["modules"]["conv1"] == 8 and doc["modules"]["fc"] == 8
    for slot, b in zip(DEFAULT.slots, bits):
        assert all(doc["modules"][m] == b for m in slot.modules)  # downsample convs carry their slot's bits
    assert doc["size_bytes"] == DEFAULT.size_bytes(bits) and doc["bitops"] == DEFAULT.bitops(bits, 6)
    assert load_bitmap(tmp_path / "m.json", DEFAULT) == tuple(bits)
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def _edit(tmp_path, change):
    doc = save_bitmap(tmp_path / "m.json", DEFAULT, [4] * 20)
    change(doc)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    return tmp_path / "m.json"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(model="resnet18"), "made for model 'resnet18'"),
        (lambda d: d["modules"].update({"layer9.conv1": 4}), "layer9.conv1 are not quantizable layers"),
        (lambda d: d["modules"].pop("fc"), "no bit-width for modules fc"),
        (lambda d: d["modules"].update({"layer2.0.downsample.0": 3}), "share one bit slot"),
        (lambda d: d["modules"].update({"fc": 9}), "modules.fc = 9"),
        (lambda d: d["modules"].update({"fc": "4"}), "modules.fc = '4'"),
        (lambda d: d.update(slots=[3] * 20), "disagrees"),
        (lambda d: d.update(format="other"), "field 'format'"),
    ],
)
def test_bad_bitmaps_are_refused(tmp_path, change, message):
    with pytest.raises(EmqError, match=message) as e:
        load_bitmap(_edit(tmp_path, change), DEFAULT)
    assert "m.json" in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(EmqError, match="no such file"):
        load_bitmap(tmp_path / "nope.json", DEFAULT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EmqError, match="not a readable JSON"):
        load_bitmap(tmp_path / "bad.json", DEFAULT)


def test_map_of_another_model_is_refused(tmp_path):
    save_bitmap(tmp_path / "tiny.json", tiny_layer_map(), [4] * 5)
    with pytest.raises(EmqError, match="made for model 'tiny', not 'default'"):
        load_bitmap(tmp_path / "tiny.json", DEFAULT)
