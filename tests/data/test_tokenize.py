"""Tokenizers: vocabulary reproduction against the shipped files, ids/padding/lengths, BERT (tiny), CLIP."""
import json

import numpy as np
import pytest
import torch

from data.datasets import delete_words
from data.precomp import load_split
from data.stopwords import ENGLISH_STOPWORDS
from data.tokenize import (UNK, VocabTokenizer, build_tokenizer, build_vocab, load_vocab_json, save_vocab_json,
                           tokenizer_from_state, vocab_report, word_tokens)
from core.config import ConfigError, DataCfg


def _captions(shared_data, name, splits=("train", "test")):
    folder = shared_data / "precomp" / f"{name}_precomp"
    return [c for s in splits for c in load_split(folder, s, check_images=False).captions]


@pytest.mark.parametrize("name", ["rsitmd", "rsicd", "sydney"])
def test_vocab_reproduces_shipped_file_exactly(shared_data, name):
    """Built from train+test captions (in file order), the vocabulary equals the shipped one id for id."""
    shipped = load_vocab_json(shared_data / "vocab" / f"{name}_splits_vocab.json")
    built = build_vocab(_captions(shared_data, name))
    assert built == shipped
    assert {"rsitmd": 1349, "rsicd": 1225, "sydney": 137}[name] == len(built)


def test_vocab_from_train_only_differs_by_known_words(shared_data):
    """Documents why train+test is the right source: from train alone RSITMD misses 81 test-only words."""
    shipped = set(load_vocab_json(shared_data / "vocab" / "rsitmd_splits_vocab.json"))
    built = set(build_vocab(_captions(shared_data, "rsitmd", ("train",))))
    assert built < shipped and len(shipped - built) == 81
    assert {"alternating", "aprons", "canal", "checkered"} <= shipped - built


@pytest.mark.parametrize("name, from_test, test_only", [("rsitmd", 81, 2), ("rsicd", 179, 25), ("sydney", 3, 1),
                                                         ("ucm", 0, 0)])
def test_vocab_report_counts_words_from_test(shared_data, name, from_test, test_only):
    """The run's report on the upstream files: words there only thanks to the test captions (fewer than 5 times in
    the training captions), and words no training caption holds at all; a built vocabulary has none."""
    train, test = _captions(shared_data, name, ("train",)), _captions(shared_data, name, ("test",))
    path = shared_data / "vocab" / f"{name}_splits_vocab.json"
    upstream = build_tokenizer(DataCfg(vocab=str(path)), train)
    rep = vocab_report(upstream, train, test)
    assert rep["source"] == f"file {path}" and (rep["n_from_test"], rep["n_test_only"]) == (from_test, test_only)
    shipped, built = load_vocab_json(path), build_vocab(train)
    assert rep["from_test_examples"] == [w for w in shipped if w not in built][:10]  # brute force: set difference
    tok = build_tokenizer(DataCfg(), train, "the training captions of fold 0")
    rep = vocab_report(tok, train, test)
    assert (rep["n_from_test"], rep["n_test_only"], rep["from_test_examples"]) == (0, 0, [])
    assert rep["source"] == f"built from the training captions of fold 0 ({len(train)} captions)"
    # the source survives a checkpoint round trip (resume, test.py)
    assert vocab_report(tokenizer_from_state(tok.state()), train, test)["source"] == rep["source"]


def test_vocab_report_hand_made():
    tok = VocabTokenizer(["red", "roof", "canal", "pier", "dock"], source="file v.json")
    train = ["a red roof"] * 5 + ["red pier", "dock"]
    rep = vocab_report(tok, train, ["a canal", "the red roof", "blue sky", "a dock"])
    # canal: in no training caption; dock: once in training (< 5); pier: in no test caption; red, roof: 5+ times
    assert rep == {"tokenizer": "vocab", "n_words": 6, "source": "file v.json", "n_test_only": 1, "n_from_test": 2,
                   "from_test_examples": ["canal", "dock"]}


def test_missing_vocab_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_tokenizer(DataCfg(vocab=str(tmp_path / "rsicd_splits_vocab.json")), ["red roof"] * 5)
    msg = str(e.value)
    assert "rsicd_splits_vocab.json (data.vocab)" in msg and "GaLR" in msg and "AMFMN" in msg
    assert 'data.vocab=""' in msg and "\n" not in msg


def test_ucm_vocab_same_words_other_order(shared_data):
    """UCM: the train captions give the shipped word set; the shipped id order comes from a source we lack."""
    shipped = load_vocab_json(shared_data / "vocab" / "ucm_splits_vocab.json")
    built = build_vocab(_captions(shared_data, "ucm", ("train",)))
    assert set(built) == set(shipped) and len(built) == 238 and built[:98] == shipped[:98] and built != shipped


def test_word_tokens_rules():
    # sentence split after "." and backticks spaced out stand in for word_tokenize's punkt step
    assert word_tokens("A park. Next to it, (three) houses; color`s!") == \
        ["a", "park", "next", "to", "it", "three", "houses", "color", "`", "s"]
    assert word_tokens("") == []


def test_stopword_list_is_nltk_english():
    assert len(ENGLISH_STOPWORDS) == 179
    assert {"the", "is", "a", "there", "no", "few", "wouldn't"} <= ENGLISH_STOPWORDS
    assert "without" not in ENGLISH_STOPWORDS and "many" not in ENGLISH_STOPWORDS


def test_vocab_encode_ids_unk_and_stopwords():
    tok = VocabTokenizer(["red", "house", "road"])
    assert tok.words == ["red", "house", "road", UNK] and len(tok) == 5 and tok.unk_id == 4
    assert tok.encode("The red house near a ROAD.") == [4, 1, 2, 4, 4, 3]  # the, near, a -> <unk>
    dropped = VocabTokenizer(["red", "house", "road"], drop_stopwords=True)
    assert dropped.encode("The red house near a ROAD.") == [1, 2, 4, 3]  # "near" is OOV, not a stop-word
    assert tok.encode("") == [0] and tok.encode(" . , ") == [0]  # empty caption: one padding token
    assert VocabTokenizer(["red"], max_tokens=3).encode("red red red red red") == [1, 1, 1]


def test_vocab_collate_padding_lengths_mask():
    tok = VocabTokenizer(["red", "house"])
    out = tok.collate([tok.encode("red house red"), tok.encode(""), tok.encode("house")])
    assert out["tokens"].tolist() == [[1, 2, 1], [0, 0, 0], [2, 0, 0]]
    assert out["lengths"].tolist() == [3, 1, 1]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert out["tokens"].dtype == out["lengths"].dtype == out["attention_mask"].dtype == torch.long


def test_vocab_json_round_trip_matches_upstream_layout(shared_data, tmp_path):
    src = shared_data / "vocab" / "rsitmd_splits_vocab.json"
    save_vocab_json(load_vocab_json(src), tmp_path / "v.json")
    assert (tmp_path / "v.json").read_text() == src.read_text()  # byte-identical JSON
    data = json.loads(src.read_text())
    assert data["idx"] == 1350 and data["word2idx"][UNK] == 1349


def test_build_tokenizer_and_state_round_trip(shared_data, tmp_path):
    cfg = DataCfg(vocab=str(shared_data / "vocab" / "ucm_splits_vocab.json"))
    tok = build_tokenizer(cfg)
    assert len(tok) == 239 and tok.words[-1] == UNK
    again = tokenizer_from_state(json.loads(json.dumps(tok.state())))
    assert again.words == tok.words and again.encode("a piece of farmland") == tok.encode("a piece of farmland")
    built = build_tokenizer(DataCfg(), ["red roof"] * 5 + ["blue"] * 4)
    assert built.words == ["red", "roof", UNK]
    with pytest.raises(ConfigError, match="data.vocab"):
        build_tokenizer(DataCfg())
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        build_tokenizer(DataCfg(vocab=str(tmp_path / "none.json")))
    with pytest.raises(ConfigError, match="unknown data.tokenizer"):
        build_tokenizer(DataCfg(tokenizer="sentencepiece"))


def _tiny_bert(tmp_path):
    from transformers import BertTokenizer as HFBert

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "house", "##s", "green", "road"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    HFBert(vocab=str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path / "tok"))
    return tmp_path / "tok"


def test_bert_tokenizer_from_local_folder(tmp_path):
    path = _tiny_bert(tmp_path)
    tok = build_tokenizer(DataCfg(tokenizer="bert", tokenizer_path=str(path), max_tokens=7))
    assert tok.kind == "bert" and len(tok) == 11 and tok.pad_id == 0 and tok.words is None
    # PIR cleaning: lower-case, "-" -> space, punctuation stripped; WordPiece splits "houses"
    assert tok.encode("A Red-Houses, green!") == [2, 5, 6, 7, 8, 9, 3]
    assert tok.encode("a a a a a a a a") == [2, 5, 5, 5, 5, 5, 3]  # truncated to max_tokens
    out = tok.collate([tok.encode("red road"), tok.encode("green")])
    assert out["tokens"].tolist() == [[2, 6, 10, 3], [2, 9, 3, 0]] and out["lengths"].tolist() == [4, 3]
    assert tokenizer_from_state(tok.state()).encode("red road") == [2, 6, 10, 3]
    # a folder holding only vocab.txt works too
    bare = build_tokenizer(DataCfg(tokenizer="bert", tokenizer_path=str(tmp_path)))
    assert bare.encode("red houses") == [2, 6, 7, 8, 3]


def test_bert_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        build_tokenizer(DataCfg(tokenizer="bert", tokenizer_path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="tokenizer_path"):
        build_tokenizer(DataCfg(tokenizer="bert"))


def test_clip_tokenizer_offline_fixed_length(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_tokenizer(DataCfg(tokenizer="clip", clip_model="ViT-B-32"))
    ids = [tok.encode("a red house next to a road ."), tok.encode("")]
    out = tok.collate(ids)
    assert out["tokens"].shape == (2, 77) and len(tok) == 49408
    eot = out["tokens"].argmax(dim=1)  # EOT has the largest id (49407)
    assert out["lengths"].tolist() == (eot + 1).tolist() == [len(ids[0]), 2]
    assert out["attention_mask"].sum(1).tolist() == out["lengths"].tolist()
    assert ids[0][0] == 49406 and ids[0][-1] == 49407


def test_word_deletion_never_empty():
    rng = np.random.default_rng(0)
    assert delete_words("a b c d", 0.0, rng) == "a b c d" and delete_words("one", 1.0, rng) == "one"
    assert len(delete_words("a b c d e", 1.0, rng).split()) == 1
    lens = [len(delete_words(" ".join(["w"] * 100), 0.1, rng).split()) for _ in range(50)]
    assert 85 < np.mean(lens) < 95


def test_build_vocab_script(shared_data, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_vocab_script", "scripts/build_vocab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shipped = shared_data / "vocab" / "sydney_splits_vocab.json"
    out = tmp_path / "v.json"
    rc = mod.main(["--precomp", str(shared_data / "precomp" / "sydney_precomp"), "--out", str(out),
                   "--compare", str(shipped)])
    assert rc == 0 and out.read_text() == shipped.read_text()
    assert "137 words (incl. <unk>) from 2775 captions" in capsys.readouterr().out
    rc = mod.main(["--precomp", str(shared_data / "precomp" / "sydney_precomp"), "--splits", "train",
                   "--compare", str(shipped)])
    assert rc == 1 and "(3): algae grey numbers" in capsys.readouterr().out
    assert mod.main(["--captions", str(tmp_path / "missing.txt")]) == 2
