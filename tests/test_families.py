"""The family records: every converter declares one, detection is unambiguous on every fixture, the CLI and the
folder writer read them, the header is read once, and the one kwargs translator resolves big_vision's
conventions."""

from __future__ import annotations

import glob
import json
import os

import pytest

from big_vision_hf.cli import main
from big_vision_hf.configuration.configuration_bv_naflex import bv_kwargs_to_naflex_config
from big_vision_hf.configuration.configuration_bv_vit import bv_kwargs_to_config
from big_vision_hf.conversion import FAMILIES, FAMILY_NAMES, CheckpointError, api, detect_family, read_checkpoint
from big_vision_hf.conversion.family import Family
from conftest import FIXTURES, Golden

EXPECTED = {
    "proj.cappa.cappa",
    "bit", "bit_paper", "mlp_mixer", "proj.clippo.one_tower", "proj.flexi.vit", "proj.image_text.naflex_vit",
    "proj.image_text.two_towers", "proj.paligemma.paligemma", "proj.paligemma.vqvae", "proj.uvim.vit",
    "proj.uvim.vtt", "vit",
    "proj.jet.jet", "proj.jetformer.jetformer",
    "proj.givt.givt", "proj.givt.cnn", "proj.givt.vit",
}
# Fixtures whose family must be named (their trees are a ViT's).
NAMED = {"flexi_vit": "proj.flexi.vit", "naflex_vit": "proj.image_text.naflex_vit"}


def test_every_converter_declares_its_family():
    assert set(FAMILY_NAMES) == EXPECTED
    for family in FAMILIES:
        assert isinstance(family, Family) and family.summary and family.classes, family.name


@pytest.mark.parametrize("params", sorted(glob.glob(os.path.join(FIXTURES, "*", "params.npz"))),
                         ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_signatures_are_exclusive_on_every_fixture(params):
    """At most one family claims each fixture tree, and it is the fixture's own (named ones: none claims them
    except the ViT they look like)."""
    name = os.path.basename(os.path.dirname(params))
    tree = set(read_checkpoint(params))
    claims = [family.name for family in FAMILIES if family.matches(tree)]
    assert len(claims) == 1, f"{name}: claimed by {claims}"
    config = os.path.join(os.path.dirname(params), "config.json")
    model_name = json.load(open(config)).get("model_name") if os.path.exists(config) else None
    if name in NAMED:
        assert claims == ["vit"]
    elif model_name in FAMILY_NAMES:
        assert claims == [model_name]


def test_a_tree_two_families_claim_is_refused():
    tree = dict.fromkeys(["embedding/kernel", "stem/kernel", "pre_head_layer_norm/scale"])  # ViT and Mixer names
    with pytest.raises(CheckpointError, match="several families .*mlp_mixer.*vit|several families .*vit"):
        detect_family(tree)


def test_cli_help_and_list_read_the_records(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in EXPECTED)
    assert main(["list", "--families"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == sorted(EXPECTED)
    assert {row.split()[0]: row.split()[1] for row in rows}["proj.flexi.vit"] == "named"


def test_header_read_once_per_conversion(tmp_path, monkeypatch):
    """A whole conversion reads the npz directory once, also the SigLIP 2 NaFlex -> Siglip2Model one whose card
    measures the deviation from the exact class (built from the same arrays, not converted again)."""
    calls = []
    original = api.read_checkpoint
    monkeypatch.setattr(api, "read_checkpoint", lambda spec: calls.append(spec) or original(spec))
    g = Golden("siglip2_naflex")
    api.convert_to_folder(g.params, str(tmp_path / "s2"), "proj.image_text.two_towers", g.model_kwargs,
                          target="transformers", progress=False)
    assert len(calls) == 1
    card = open(tmp_path / "s2" / "README.md").read()
    assert "max abs difference from the exact big_vision_hf `BvSiglipModel`" in card
    calls.clear()
    api.convert_to_folder(Golden("vit_tok").params, str(tmp_path / "vit"), progress=False)
    assert len(calls) == 1


def test_tokenizer_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["convert", Golden("vit_tok").params, str(out), "--tokenizer", str(tmp_path / "missing.model")])
    assert rc == 2 and not out.exists()
    assert "--tokenizer" in capsys.readouterr().err


def test_tokenizer_for_a_family_without_text_is_a_one_line_error(tmp_path, capsys):
    spm = tmp_path / "x.model"
    spm.write_bytes(b"not used")
    rc = main(["convert", Golden("vit_tok").params, str(tmp_path / "out"), "--tokenizer", str(spm), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tokenizer applies to models with text input, not to vit" in err and len(err.splitlines()) == 1


def test_config_value_errors_become_checkpoint_errors():
    g = Golden("vit_tok")
    with pytest.raises(CheckpointError, match="unknown big_vision ViT option 'bogus'"):
        api.build(g.params, "vit", {"bogus": 1})
    with pytest.raises(CheckpointError, match="do\\(es\\) not apply to vit"):
        api.build(g.params, "vit", {}, target="bv")


def test_one_translator_resolves_big_vision_conventions():
    """``rep_size=True`` is the width and ``mlp_dim=None`` is 4x the width, for the ViT and NaFlex alike; with the
    width unknown, ``True`` is left for the converter (which reads the width from the arrays)."""
    for translate in (bv_kwargs_to_config, bv_kwargs_to_naflex_config):
        assert translate({"variant": "S/16", "rep_size": True})["representation_size"] == 384
        assert translate({"width": 64, "mlp_dim": None})["intermediate_size"] == 256
        assert translate({"rep_size": False})["representation_size"] is None
        assert translate({"rep_size": True})["representation_size"] is True
    with pytest.raises(ValueError, match="unknown big_vision NaFlex option 'cls'"):
        bv_kwargs_to_naflex_config({"cls": 1})
