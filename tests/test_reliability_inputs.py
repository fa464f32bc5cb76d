"""Malformed checkpoints, converted folders, datasets and arguments: each is a one-line error naming the culprit.

Checkpoints: an integer kernel, a scalar kernel, a NaN / Inf parameter (``--allow-nonfinite`` converts it), a
header claiming more bytes than the file, an impossible deflate size, duplicate members, a corrupted member
(CRC-32). Folders: a missing shard, a truncated shard, a config contradicting the weights, a tokenizer larger than
the model's vocabulary; a remote-code folder holds only the model's code; nothing in the package unpickles.
Datasets: a missing or null target, a numeric image path, a non-string prompt, an empty target, a VQA answers field
that is not a list of answers, boxes / masks / ``<loc>`` tokens out of range, an index out of range (``--skip-bad``
drops and counts them). Arguments: every numeric flag is range-checked by argparse with the flag's name.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zipfile

import numpy as np
import pytest

from big_vision_hf.cli import main
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from conftest import Golden, rewrite_npz

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "big_vision_hf")


def _one_line(capsys, argv, command="convert") -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"expected exit code 2, got {rc}: {err}"
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"big-vision-hf {command}: error: "), err
    return err


def _convert(capsys, path, tmp_path, *extra) -> str:
    return _one_line(capsys, ["convert", str(path), str(tmp_path / "out"), "--quiet", *extra])


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


def test_integer_kernel_is_refused(tmp_path, capsys):
    g = Golden("vit_tok")
    bad = rewrite_npz(g.params, str(tmp_path / "int.npz"),
                      lambda a: {**a, "embedding/kernel": (a["embedding/kernel"] * 100).astype(np.int32)})
    err = _convert(capsys, bad, tmp_path)
    assert "embedding/kernel" in err and "stored as int32" in err, err
    assert not os.path.exists(tmp_path / "out")


def test_scalar_kernel_is_refused(tmp_path, capsys):
    g = Golden("vit_tok")
    bad = rewrite_npz(g.params, str(tmp_path / "scalar.npz"), lambda a: {**a, "head/kernel": np.float32(1.0)})
    err = _convert(capsys, bad, tmp_path)
    assert "head/kernel is a scalar" in err, err


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_parameter_is_refused_unless_allowed(tmp_path, capsys, value):
    g = Golden("vit_tok")

    def poison(a):
        x = a["Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"].copy()
        x[3] = value
        return {**a, "Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias": x}

    bad = rewrite_npz(g.params, str(tmp_path / "nan.npz"), poison)
    err = _convert(capsys, bad, tmp_path)
    assert "Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias" in err and "1 NaN/infinite" in err, err
    assert main(["convert", bad, str(tmp_path / "out"), "--quiet", "--allow-nonfinite"]) == 0
    with pytest.raises(CheckpointError, match="NaN/infinite"):
        convert_checkpoint(bad, "vit")
    assert convert_checkpoint(bad, "vit", allow_nonfinite=True) is not None


def test_nonfinite_in_a_streamed_conversion(tmp_path, capsys):
    """PaliGemma's streamed writer checks every tensor it writes; the scan-stacked array is named per layer."""
    g = Golden("paligemma")
    kwargs = g.model_kwargs
    kwargs["llm"] = {**kwargs["llm"], "variant": g.config["gemma_variant_config"]}

    def poison(a):
        key = next(k for k in a if k.endswith("mlp/linear"))
        x = a[key].copy()
        x.reshape(-1)[-1] = np.inf
        return {**a, key: x}

    bad = rewrite_npz(g.params, str(tmp_path / "pg.npz"), poison)
    err = _convert(capsys, bad, tmp_path, "--model-name", "proj.paligemma.paligemma", "--model-config",
                   json.dumps(kwargs))
    assert "mlp/linear" in err and "NaN/infinite" in err, err
    assert not os.path.exists(tmp_path / "out") and os.listdir(tmp_path) == ["pg.npz"]


def _zip_field(data: bytearray, member: str, offset: int, fmt: str, value: int) -> None:
    """Overwrites a field of ``member``'s central-directory record (offsets as in the zip specification)."""
    pos = data.index(b"PK\x01\x02")
    while True:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + name_len].decode() == member:
            struct.pack_into(fmt, data, pos + offset, value)
            return
        pos += 46 + name_len + extra_len + comment_len


def _npz_with_member(src: str, dst, name: str, member_bytes: bytes) -> None:
    """``src``'s arrays, with ``name.npy`` replaced by raw bytes (a valid zip: sizes and CRC match the bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, member_bytes if info.filename == name + ".npy" else zin.read(info))


def test_header_claiming_more_bytes_than_the_member_holds(tmp_path, capsys):
    """A ``.npy`` header asking for 4 GB (10**9 float32) over a 40-byte payload: refused before any allocation."""
    g = Golden("vit_tok")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    path = tmp_path / "claims.npz"
    _npz_with_member(g.params, path, "head/bias", header.getvalue() + np.zeros(10, np.float32).tobytes())
    err = _convert(capsys, path, tmp_path)
    assert "'head/bias'" in err and "4,000,000,000 bytes" in err and "holds 40" in err, err


def test_stored_member_claiming_more_than_the_file_holds(tmp_path, capsys):
    g = Golden("vit_tok")
    data = bytearray(open(g.params, "rb").read())
    _zip_field(data, "pre_logits/kernel.npy", 20, "<I", 0x7FFFFFF0)  # compressed size
    _zip_field(data, "pre_logits/kernel.npy", 24, "<I", 0x7FFFFFF0)  # uncompressed size
    path = tmp_path / "huge.npz"
    path.write_bytes(bytes(data))
    err = _convert(capsys, path, tmp_path)
    assert "pre_logits/kernel" in err, err


def test_deflated_member_with_an_impossible_size(tmp_path, capsys):
    g = Golden("vit_tok")
    arrays = dict(np.load(g.params))
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **arrays)
    data = bytearray(path.read_bytes())
    _zip_field(data, "cls.npy", 24, "<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    err = _convert(capsys, path, tmp_path)
    assert "cls" in err and ("impossible size" in err or "claims" in err), err


def test_corrupted_member_fails_its_crc(tmp_path, capsys):
    g = Golden("vit_tok")
    data = bytearray(open(g.params, "rb").read())
    member = data.index(b"pos_embedding.npy")
    data[member + 400] ^= 0x01  # one bit of a float in the payload
    path = tmp_path / "bitflip.npz"
    path.write_bytes(bytes(data))
    err = _convert(capsys, path, tmp_path)
    assert "pos_embedding" in err and "CRC" in err, err


def test_duplicate_member_is_refused(tmp_path, capsys):
    g = Golden("vit_tok")
    path = tmp_path / "dup.npz"
    shutil.copy(g.params, path)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning):
        zf.writestr("head/bias.npy", b"\x93NUMPY")
    err = _convert(capsys, path, tmp_path)
    assert "head/bias.npy" in err and "more than once" in err, err


def test_float16_float64_and_big_endian_arrays_convert_exactly(tmp_path):
    g = Golden("vit_tok")
    ref = convert_checkpoint(g.params, "vit", g.model_kwargs).state_dict()
    for dtype in ("float64", ">f4"):
        path = rewrite_npz(g.params, str(tmp_path / "x.npz"), lambda a: {k: v.astype(dtype) for k, v in a.items()})
        state = convert_checkpoint(path, "vit", g.model_kwargs).state_dict()
        assert all(bool((state[k] == v).all()) for k, v in ref.items()), dtype


def test_swapped_head_axes_are_refused(tmp_path):
    """A kernel stored [head_dim, heads, D] fits the flattened weight's shape but not the other layers' heads."""
    g = Golden("vit_tok")
    key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel"
    path = rewrite_npz(g.params, str(tmp_path / "heads.npz"),
                       lambda a: {**a, key: np.ascontiguousarray(a[key].transpose(1, 0, 2))})
    with pytest.raises(CheckpointError, match=r"out/kernel has heads x head_dim \(12, 4\)"):
        convert_checkpoint(path, "vit", g.model_kwargs)


# ---------------------------------------------------------------------------------------------------------
# Converted folders
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("folder") / "vit")
    assert main(["convert", Golden("vit_tok").params, out, "--quiet", "--max-shard-size", "40KB"]) == 0
    return out


def _load(folder):
    from transformers import AutoModelForImageClassification

    import big_vision_hf  # noqa: F401

    return AutoModelForImageClassification.from_pretrained(folder)


def _copy(vit_folder, tmp_path, name="copy") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(vit_folder, dst)
    return dst


def _shards(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f))


def test_folder_with_a_missing_shard(vit_folder, tmp_path):
    from big_vision_hf.modeling.loading import FolderError

    folder = _copy(vit_folder, tmp_path)
    os.remove(os.path.join(folder, _shards(folder)[1]))
    with pytest.raises(FolderError, match=r"weight shard\(s\) missing: model-00002-of-0000\d\.safetensors") as e:
        _load(folder)
    assert "\n" not in str(e.value)


def test_folder_with_a_truncated_shard(vit_folder, tmp_path):
    from big_vision_hf.modeling.loading import FolderError

    folder = _copy(vit_folder, tmp_path)
    shard = os.path.join(folder, _shards(folder)[-1])
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    with pytest.raises(FolderError, match=re.escape(os.path.basename(shard)) + ".*truncated or corrupt"):
        _load(folder)


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", 64, r"shapes: .* \(1, 1, 48\) in the weights vs \(1, 1, 64\)"),
    ("num_hidden_layers", 3, r"parameters the weights do not fill: vit\.encoder\.layers\.2\."),
    ("num_hidden_layers", 1, r"weights the model has no place for: vit\.encoder\.layers\.1\."),
    ("representation_size", None, r"no place for: vit\.pre_logits\.bias"),
])
def test_folder_whose_config_contradicts_the_weights(vit_folder, tmp_path, key, value, message):
    from big_vision_hf.modeling.loading import FolderError

    folder = _copy(vit_folder, tmp_path)
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config[key] = value
    json.dump(config, open(path, "w"))
    with pytest.raises(FolderError, match=message) as e:
        _load(folder)
    assert "\n" not in str(e.value)


def test_a_new_head_is_still_fine_tunable(vit_folder):
    """Strict loading keeps transformers' fine-tuning paths: a new head of another size, a base model from a
    classifier folder."""
    from transformers import AutoModel, AutoModelForImageClassification

    from big_vision_hf.modeling.loading import FolderError

    with pytest.raises(FolderError, match="classifier.weight"):
        AutoModelForImageClassification.from_pretrained(vit_folder, num_labels=3)
    model = AutoModelForImageClassification.from_pretrained(vit_folder, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 3
    assert type(AutoModel.from_pretrained(vit_folder)).__name__ == "BvViTModel"


def test_tokenizer_that_does_not_fit_the_model(tmp_path):
    """A PaliGemma folder whose tokenizer has more tokens than the model's vocabulary: one line from the processor."""
    from big_vision_hf.processing.processing_paligemma import BvPaliGemmaProcessor
    from big_vision_hf.transfer import synthetic

    folder = tmp_path / "pg"
    tokenizer = synthetic.make_tokenizer(str(tmp_path / "tokenizer.model"))
    model = synthetic.make_model(tokenizer)
    processor = synthetic.make_processor(tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert BvPaliGemmaProcessor.from_pretrained(folder) is not None
    config = json.load(open(folder / "config.json"))
    config["text_config"]["vocab_size"] = 100
    json.dump(config, open(folder / "config.json", "w"))
    message = r"config.json: the tokenizer has ids up to \d+ but the model.s vocab_size is 100"
    with pytest.raises(ValueError, match=message) as e:
        BvPaliGemmaProcessor.from_pretrained(folder)
    assert "\n" not in str(e.value)


def test_remote_code_folder_holds_only_the_models_code(vit_folder):
    code = sorted(f for f in os.listdir(vit_folder) if f.endswith(".py"))
    # the model, its config, its image processor and the strict loader they share
    assert code == ["configuration_bv_vit.py", "image_processing_bv.py", "loading.py", "modeling_bv_vit.py"], code
    for name in code:  # flat sibling imports only; nothing of the converter, the CLI or the transfer package
        source = open(os.path.join(vit_folder, name)).read()
        imports = re.findall(r"^\s*(?:from\s+(\S+)\s+import|import\s+(\S+))", source, re.MULTILINE)
        ours = [a or b for a, b in imports if (a or b).startswith(("..", "big_vision_hf"))]
        assert not ours, f"{name} imports {ours}"


def test_nothing_in_the_package_unpickles():
    """No pickle / torch.load without weights_only=True / np.load(allow_pickle=True) in big_vision_hf; the only torch
    files ever read are the Trainer's checkpoint states, which transformers loads with weights_only=True."""
    offenders = []
    patterns = [r"^\s*(?:import|from)\s+(?:pickle|_pickle|cPickle|cloudpickle|dill|joblib|shelve|marshal)\b",
                r"\b(?:pickle|cloudpickle|dill|joblib|marshal)\.loads?\(", r"\bUnpickler\(",
                r"allow_pickle\s*=\s*True", r"\bread_pickle\("]
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            source = open(path, encoding="utf-8").read()
            offenders += [f"{path}: {p}" for p in patterns if re.search(p, source, re.MULTILINE)]
            for call in re.finditer(r"torch\.load\(", source):
                args = source[call.end():source.find(")", call.end()) + 200]
                if "weights_only=True" not in args:
                    offenders.append(f"{path}: torch.load without weights_only=True")
    assert not offenders, offenders
    import transformers.trainer as trainer

    source = open(trainer.__file__, encoding="utf-8").read()
    calls = [source[m.start():m.start() + 300] for m in re.finditer(r"torch\.load\(", source)]
    assert calls and all("weights_only=True" in c.split(")\n")[0] for c in calls), "Trainer unpickles"


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "a.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


def _jsonl(folder, name, rows) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


GOOD = {"image": "a.png", "prefix": "caption en", "suffix": "a red square"}


@pytest.mark.parametrize("bad, message", [
    ({"image": "a.png", "prefix": "caption en"}, "'suffix' is missing"),
    ({"image": "a.png", "prefix": "caption en", "suffix": None}, "'suffix' is null"),
    ({"image": "a.png", "prefix": "caption en", "suffix": ""}, "'suffix' is an empty string"),
    ({"image": 12, "prefix": "caption en", "suffix": "x"}, "'image' is a number (12)"),
    ({"image": "", "prefix": "caption en", "suffix": "x"}, "'image' is an empty string"),
    ({"image": "a.png", "prefix": ["caption"], "suffix": "x"}, "'prefix' is a list of 1; expected a string"),
    ({"image": "a.png", "prefix": 7, "suffix": "x"}, "'prefix' is a number (7)"),
])
def test_bad_jsonl_record_names_file_line_and_field(image_dir, tmp_path, bad, message):
    from big_vision_hf.transfer.data import BadRecordError, prepare_dataset

    path = _jsonl(image_dir, "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(BadRecordError) as e:
        prepare_dataset(path, "jsonl")
    assert str(e.value).startswith("d.jsonl:3 (record 2): ") and message in str(e.value), str(e.value)
    ds, report = prepare_dataset(path, "jsonl", skip_bad=True, return_report=True)
    assert len(ds) == 3 and report.num_bad == 1 and report.num_records == 4 and report.bad[0][0] == 2


VQA = {"image": "a.png", "question": "what colour?", "answers": ["red", "red", "dark red"]}


@pytest.mark.parametrize("task, bad, message", [
    ("vqav2", {**VQA, "answers": 5}, "'answers' is a number (5); expected a non-empty list of answers"),
    ("vqav2", {**VQA, "answers": []}, "'answers' is an empty list"),
    ("vqav2", {**VQA, "answers": [{"answer": "red"}]}, "'answers' holds a dict; answers must be strings"),
    ("vqav2", {**VQA, "question": None}, "'question' is null"),
    ("vqav2", {**VQA, "question": "  "}, "'question' is an empty string"),
    ("refcoco_det", {"image": "a.png", "sentence": "the square", "bbox": [0.1, 0.1, 1.5, 0.9]},
     "'bbox' is [0.1, 0.1, 1.5, 0.9], out of range"),
    ("refcoco_det", {"image": "a.png", "sentence": "the square", "bbox": [0.8, 0.1, 0.2, 0.9]}, "y1 > y2"),
    ("refcoco_det", {"image": "a.png", "sentence": "the square", "bbox": [0.1, 0.2]}, "expected a box"),
    ("refcoco_seg", {"image": "a.png", "sentence": "the square", "bbox": [0, 0, 1, 1], "mask": [[0, 300]]},
     "'mask' has values in [0, 300], out of range"),
    ("refcoco_seg", {"image": "a.png", "sentence": "the square", "bbox": [0, 0, 1, 1], "mask": 3},
     "'mask' is a number (3)"),
    ("detection", {"image": "a.png", "categories": "cat", "objects": "<loc0100><loc0100><loc1100><loc0200> cat"},
     "<loc> token out of range (1100 > 1023)"),
    ("science_qa", {"image": "a.png", "question": "q?", "choices": ["a", "b"], "answer": 2},
     "'answer' is 2, out of range for 2 choices"),
    ("aokvqa_mc", {"image": "a.png", "question": "q?", "multiple_choice_possible_answers": ["a", "b"],
                   "multiple_choice_correct_idx": "x"}, "expected an integer index"),
])
def test_bad_task_fields(image_dir, task, bad, message):
    from big_vision_hf.transfer.data import BadRecordError, prepare_dataset

    good = {"vqav2": VQA,
            "refcoco_det": {"image": "a.png", "sentence": "the square", "bbox": [0.25, 0.25, 0.75, 0.75]},
            "refcoco_seg": {"image": "a.png", "sentence": "the square", "bbox": [0.25, 0.25, 0.75, 0.75],
                            "mask": "mask.png"},
            "detection": {"image": "a.png", "categories": "cat", "objects": "<loc0100><loc0100><loc0200><loc0200> cat"},
            "science_qa": {"image": "a.png", "question": "q?", "choices": ["a", "b"], "answer": 1},
            "aokvqa_mc": {"image": "a.png", "question": "q?", "multiple_choice_possible_answers": ["a", "b"],
                          "multiple_choice_correct_idx": 0}}[task]
    path = _jsonl(image_dir, f"{task}.jsonl", [good, bad])
    with pytest.raises(BadRecordError, match=re.escape(f"{task}.jsonl:2 (record 1): ") + ".*" + re.escape(message)):
        prepare_dataset(path, task, validate=True, vqvae=object())


def test_numeric_answers_are_kept_as_strings(image_dir):
    """TallyQA's answer is a number in its source; a column mixing numbers and strings loads (as the builders print
    it), instead of a pyarrow conversion error."""
    from big_vision_hf.transfer.data import prepare_dataset

    rows = [{"image": "a.png", "question": "how many?", "answer": 3},
            {"image": "a.png", "question": "how many?", "answer": "4"}]
    ds = prepare_dataset(_jsonl(image_dir, "tally.jsonl", rows), "tallyqa")
    assert list(ds["suffix"]) == ["3", "4"]


def test_mixed_column_is_named(image_dir):
    from big_vision_hf.transfer.data import BadRecordError, prepare_dataset

    rows = [{**GOOD, "id": 1}, {**GOOD, "id": "two"}]
    with pytest.raises(BadRecordError, match=r"mixed.jsonl:2: column 'id' is a str here but a int at mixed.jsonl:1"):
        prepare_dataset(_jsonl(image_dir, "mixed.jsonl", rows), "jsonl")


def test_datasets_source_is_validated_by_index(image_dir):
    import datasets

    from big_vision_hf.transfer.data import BadRecordError, prepare_dataset

    ds = datasets.Dataset.from_list([{**GOOD, "image": str(image_dir / "a.png")},
                                     {**GOOD, "image": str(image_dir / "a.png"), "suffix": None}])
    with pytest.raises(BadRecordError, match=r"^record 1: 'suffix' is null"):
        prepare_dataset(ds, "jsonl")


def test_cli_skip_bad_counts(image_dir, tmp_path, capsys):
    from big_vision_hf.transfer.data import prepare_dataset

    path = _jsonl(image_dir, "mix.jsonl", [GOOD, {**GOOD, "suffix": None}, GOOD, {**GOOD, "image": 3}, GOOD])
    err = _one_line(capsys, ["transfer", "--data", path, "--output", str(tmp_path / "o"), "--max-steps", "1",
                             "--quiet"], "transfer")
    assert "mix.jsonl:2 (record 1): 'suffix' is null" in err, err
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(str(tmp_path / "o") + ".partial")
    ds, report = prepare_dataset(path, "jsonl", skip_bad=True, return_report=True)
    assert len(ds) == 3 and report.num_bad == 2 and [b[0] for b in report.bad] == [1, 3]
    assert str(report).startswith("2 of 5 records skipped")


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["transfer", "--max-steps", "0"], "argument --max-steps: must be an integer >= 1, got 0"),
    (["transfer", "--batch-size", "-4"], "argument --batch-size: must be an integer >= 1, got -4"),
    (["transfer", "--eval-batch-size", "0"], "argument --eval-batch-size: must be an integer >= 1"),
    (["transfer", "--eval-limit", "0"], "argument --eval-limit: must be an integer >= 1"),
    (["transfer", "--lora-rank", "0"], "argument --lora-rank: must be an integer >= 1"),
    (["transfer", "--lr", "0"], "argument --lr: must be a number > 0, got 0"),
    (["transfer", "--lr", "nan"], "argument --lr: must be a number > 0, got nan"),
    (["transfer", "--epochs", "-1"], "argument --epochs: must be a number > 0"),
    (["transfer", "--epochs", "inf"], "argument --epochs: must be a number > 0"),
    (["transfer", "--res", "300"], "argument --res: invalid choice: 300"),
    (["transfer", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["transfer", "--max-steps", "two"], "argument --max-steps: must be an integer >= 1, got 'two'"),
    (["evaluate", "--model", "m", "--data", "d", "--limit", "0"], "argument --limit: must be an integer >= 1"),
    (["evaluate", "--model", "m", "--data", "d", "--batch-size", "0"], "argument --batch-size: must be an integer"),
    (["evaluate", "--model", "m", "--data", "d", "--num-beams", "0"], "argument --num-beams: must be an integer"),
    (["convert", "x.npz", "out", "--image-size", "0"], "argument --image-size: must be an integer >= 1, got 0"),
    (["convert", "x.npz", "out", "--max-shard-size", "0GB"], "argument --max-shard-size: must be a size > 0"),
    (["convert", "x.npz", "out", "--max-shard-size", "lots"], "argument --max-shard-size: must be a size > 0"),
])
def test_numeric_flags_are_range_checked(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(message) or message in err, err
