"""The T5 tokenizer: ids against transformers and sentencepiece, where the vocabulary is looked for, and
the error that says where to put it. The vocabulary is a tiny SentencePiece model trained in the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.diffusion.text.t5_tokenizer import (
    T5TokenizerFilesError,
    find_t5_vocabulary,
    load_t5_tokenizer,
    read_sentencepiece_model,
)
from tests.unit.diffusion.t5_fixtures import SENTENCES, SPM_VOCAB, train_spiece

PROMPTS = [
    *SENTENCES,
    "a photo of a cat",
    " cat",
    "cat ",
    "a  red   dog",
    "",
    "   ",
    "THE QUICK brown zebra, 123!",
    "Ünïcödé ﬁne café",  # NFKC folds the ligature
    "tab\tand\nnewline",
    "</s> after an end token",
    "a <extra_id_0> b <extra_id_99>",
]


@pytest.fixture()
def spiece(tmp_path: Path) -> Path:
    return train_spiece(tmp_path / "vocab" / "spiece.model")


def test_ids_equal_transformers_t5_tokenizer_from_the_same_spiece_model(spiece: Path) -> None:
    from transformers import T5TokenizerFast

    reference = T5TokenizerFast.from_pretrained(str(spiece.parent))
    ours = load_t5_tokenizer(spiece)
    assert ours.vocab_size == len(reference) == SPM_VOCAB + 100
    for prompt in PROMPTS:
        assert ours.encode(prompt) == reference(prompt)["input_ids"], prompt
    # T5's conventions: </s> is 1 and ends every sequence; <extra_id_0> is the last id.
    assert ours.encode("") == [1]
    assert ours.encode("<extra_id_0>") == [SPM_VOCAB + 99, 1]


def test_plain_text_ids_equal_sentencepiece_plus_end_token(spiece: Path) -> None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spiece))
    ours = load_t5_tokenizer(spiece)
    for prompt in PROMPTS[:-2]:  # sentencepiece itself knows no added tokens
        assert ours.encode(prompt) == processor.encode(prompt) + [1], prompt


def test_a_piece_right_after_an_added_token_gets_no_word_prefix(spiece: Path) -> None:
    # The Hugging Face tokenizer.json of T5 v1.1 (the file ComfyUI runs) prepends the word marker to the
    # first piece of the text only ("prepend_scheme": "first"); transformers 5's own spiece conversion
    # prepends it everywhere, so the two differ exactly here. We follow the file ComfyUI uses.
    ours = load_t5_tokenizer(spiece)
    tokens = ours.backend.encode("a<extra_id_0>b").tokens
    assert tokens[1] == "<extra_id_0>" and tokens[2] == "b" and tokens[-1] == "</s>"
    assert ours.backend.encode("a <extra_id_0> b").tokens[2] == "\u2581b"


def test_proto_reader_agrees_with_sentencepiece(spiece: Path) -> None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spiece))
    model = read_sentencepiece_model(spiece.read_bytes())
    assert len(model.pieces) == processor.get_piece_size()
    assert [p for p, _, _ in model.pieces] == [processor.id_to_piece(i) for i in range(len(model.pieces))]
    assert [s for _, s, _ in model.pieces] == pytest.approx(
        [processor.get_score(i) for i in range(SPM_VOCAB)]
    )
    assert model.unk_id == processor.unk_id() == 2
    assert model.model_type == 1 and len(model.charsmap) > 1000  # unigram with the NFKC map


def test_tokenizer_json_is_loaded_as_it_is(spiece: Path, tmp_path: Path) -> None:
    from transformers import T5TokenizerFast

    reference = T5TokenizerFast.from_pretrained(str(spiece.parent))
    comfy_root = tmp_path / "ComfyUI"
    folder = comfy_root / "comfy" / "text_encoders" / "t5_tokenizer"
    reference.save_pretrained(str(folder))
    (folder / "spiece.model").unlink(missing_ok=True)
    found = find_t5_vocabulary(comfyui_roots=[comfy_root], use_comfy_package=False)
    assert found == folder / "tokenizer.json"
    ours = load_t5_tokenizer(found)
    for prompt in [*PROMPTS, "a<extra_id_0>b"]:
        assert ours.encode(prompt) == reference(prompt)["input_ids"], prompt
    # A file that asks for truncation does not get it: long prompts stay whole (ComfyUI's rule).
    spec = json.loads(found.read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    found.write_text(json.dumps(spec))
    assert load_t5_tokenizer(found).encode(SENTENCES[0]) == reference(SENTENCES[0])["input_ids"]


def _place(path: Path, spiece: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(spiece, path)
    return path


def test_search_order(spiece: Path, tmp_path: Path) -> None:
    models = tmp_path / "models" / "text_encoders"
    t5_file = models / "t5xxl_fp16.safetensors"
    t5_file.parent.mkdir(parents=True)
    t5_file.write_bytes(b"")
    diffusers = tmp_path / "sd3-diffusers"
    comfy_root = tmp_path / "ComfyUI"
    explicit = _place(tmp_path / "mine" / "spiece.model", spiece)
    expected = [
        explicit,
        _place(diffusers / "tokenizer_3" / "spiece.model", spiece),
        _place(diffusers / "tokenizer_2" / "spiece.model", spiece),
        _place(models / "t5_tokenizer" / "spiece.model", spiece),  # beside the file and in the folder
        _place(comfy_root / "comfy" / "text_encoders" / "t5_tokenizer" / "tokenizer.json", spiece),
    ]
    beside = _place(models / "spiece.model", spiece)  # a bare spiece.model next to the T5 file
    where = {
        "diffusers_folder": diffusers,
        "text_encoder_file": t5_file,
        "text_encoder_folders": [models],
        "comfyui_roots": [comfy_root],
        "use_comfy_package": False,
    }
    assert find_t5_vocabulary(path=explicit, **where) == explicit
    assert find_t5_vocabulary(path=explicit.parent, **where) == explicit
    for path in expected[1:4]:
        assert find_t5_vocabulary(**where) == path
        path.unlink()
    assert find_t5_vocabulary(**where) == beside
    beside.unlink()
    assert find_t5_vocabulary(**where) == expected[4]
    # tokenizer.json is preferred to spiece.model inside one folder (it is what ComfyUI runs)
    json_file = models / "t5_tokenizer" / "tokenizer.json"
    json_file.write_text("{}")
    assert find_t5_vocabulary(**where) == json_file


def test_missing_vocabulary_names_the_file_and_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "text_encoders"
    folder.mkdir(parents=True)
    with pytest.raises(T5TokenizerFilesError) as info:
        find_t5_vocabulary(
            diffusers_folder=tmp_path / "flux-dev",
            text_encoder_folders=[folder],
            use_comfy_package=False,
        )
    message = str(info.value)
    assert "spiece.model" in message
    assert f"into {folder / 't5_tokenizer'}/" in message
    assert str(tmp_path / "flux-dev" / "tokenizer_2") in message  # where it looked
    with pytest.raises(T5TokenizerFilesError, match="does not exist"):
        find_t5_vocabulary(path=tmp_path / "nowhere.model", use_comfy_package=False)


def test_comfyui_package_on_sys_path_is_found_without_importing_it(
    spiece: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    package = tmp_path / "site" / "comfy"
    (package / "__init__.py").parent.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    bundled = _place(package / "text_encoders" / "t5_tokenizer" / "tokenizer.json", spiece)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "comfy", raising=False)
    assert find_t5_vocabulary() == bundled
    assert "comfy" not in sys.modules


def test_files_that_are_not_a_t5_vocabulary_are_refused(spiece: Path, tmp_path: Path) -> None:
    bpe = tmp_path / "clip" / "tokenizer.json"
    bpe.parent.mkdir()
    bpe.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    with pytest.raises(T5TokenizerFilesError, match="not a SentencePiece Unigram"):
        load_t5_tokenizer(bpe)
    garbage = tmp_path / "bad" / "spiece.model"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\xff\xff\xff")
    with pytest.raises(T5TokenizerFilesError, match="SentencePiece"):
        load_t5_tokenizer(garbage)
    with pytest.raises(T5TokenizerFilesError, match="holds neither tokenizer.json nor spiece.model"):
        load_t5_tokenizer(bpe.parent.parent)
