"""Telling an SWCM directory from the XLM-R encoder it was built from, by config.json alone (both say model_type
xlm-roberta), and the entry points that take one kind refusing the other."""

import json

import pytest

from swcm.convert import ConversionError
from swcm.convert.from_encoder import convert_from_encoder, read_encoder_config
from swcm.hf_dir import SWCM, config_kind, dir_kind
from swcm.tasks.model_dir import ModelDirError, lang_codes


@pytest.fixture(scope="module")
def export(tiny_xlmr_dir, tmp_path_factory):
    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("kind") / "swcm", normal_layer_every=1)


def test_an_export_says_xlm_roberta_and_is_still_told_apart(export, tiny_xlmr_dir):
    fields = json.loads((export / "config.json").read_text())
    assert fields["model_type"] == "xlm-roberta"
    assert dir_kind(export) == SWCM and dir_kind(tiny_xlmr_dir) == "xlm-roberta"
    assert lang_codes(export) == ["bo", "kk", "mn", "ug", "zh"]
    with pytest.raises(ModelDirError, match="not an SWCM model directory"):
        lang_codes(tiny_xlmr_dir)


@pytest.mark.parametrize("fields, kind", [
    ({"model_type": "xlm-roberta", "auto_map": {"AutoConfig": "modeling_swcm.SWCMConfig"}}, SWCM),
    ({"model_type": "xlm-roberta", "auto_map": {"AutoConfig": "someone/swcm-bo--modeling_swcm.SWCMConfig"}}, SWCM),
    ({"model_type": "swcm", "lang_codes": ["bo"]}, SWCM),                  # exported before the type changed
    ({"model_type": "xlm-roberta", "auto_map": {"AutoConfig": "modeling_other.SWCMConfigLike"}}, "xlm-roberta"),
    ({"model_type": "xlm-roberta", "auto_map": ["modeling_swcm.SWCMConfig"]}, "xlm-roberta"),
    ({"model_type": "encoder-decoder"}, "encoder-decoder"),
    ({"architectures": ["SWCMForConditionalGeneration"]}, None),
    (["model_type", "swcm"], None),
])
def test_config_kind(fields, kind):
    assert config_kind(fields) == kind


def test_dir_kind_of_unreadable_configs(tmp_path):
    assert dir_kind(tmp_path) is None
    (tmp_path / "config.json").write_bytes(b"\xff{")
    assert dir_kind(tmp_path) is None


def test_from_encoder_refuses_an_swcm_directory(export):
    with pytest.raises(ConversionError, match="an SWCM model, not an XLM-R encoder"):
        read_encoder_config(export)
