"""Caption tokenizers behind one small API: GaLR-family word vocabularies, BERT WordPiece, CLIP BPE.

Every tokenizer turns a caption into a list of ids (``encode``) and a list of those into padded tensors
(``collate``: ``tokens`` long [B, L], ``lengths`` long [B] (>= 1), ``attention_mask`` long [B, L]), and can be
rebuilt from the small JSON-able dict ``state()`` that checkpoints keep.

Word vocabulary (AMFMN / GaLR / SWAN / KAMCL, METHODS.md A2). Upstream builds and encodes with
``nltk.word_tokenize``, which needs the punkt model (a download). rsitr uses nltk's ``TreebankWordTokenizer`` with two
light pre-steps that stand in for what ``word_tokenize`` adds on top of it: (1) ``word_tokenize`` first splits the text
into sentences (punkt) and tokenises each, so a period inside a caption ("... a park. next to ...") becomes its own
token; here the text is split after ``.``, ``!`` or ``?`` followed by white space; (2) its word tokenizer splits
backticks off words ("color`s" -> "color", "`", "s"); here runs of backticks are spaced out. With these, the vocabulary
built from train+test captions equals the shipped ``rsitmd``, ``rsicd`` and ``sydney`` ``*_splits_vocab.json`` word for
word and id for id (tests/data/test_tokenize.py; UCM: same words from the train captions, different id order).
Ids run from 1, 0 is padding, ``<unk>`` is the last id. At encode time stop-words (absent from the vocabulary) map to
``<unk>`` as upstream, or are dropped with ``data.drop_stopwords``. An empty caption encodes to one padding token
(upstream: "length 0 -> 1").

BERT (PIR / FISVL): ``transformers.AutoTokenizer`` from a local folder, after PIR's caption cleaning. CLIP
(PE-RSITR): ``open_clip.get_tokenizer`` (the BPE vocabulary ships in the wheel), fixed length 77, length = position
of the end-of-text token + 1.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from core.config import ConfigError, DataCfg
from core.errors import DataError, MissingFileError
from core.files import RequiredFile
from core.weights import resolve_path
from data.stopwords import ENGLISH_STOPWORDS

PUNCTUATION = frozenset(", . : ; ? ( ) [ ] & ! * @ # $ %".split())  # METHODS.md A2, dropped before counting
UNK = "<unk>"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BACKTICKS = re.compile(r"(`+)")
_treebank = None


def word_tokens(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption with the A2 punctuation set removed (stop-words kept)."""
    return list(_word_tokens(caption))


@lru_cache(maxsize=1 << 17)  # real sets repeat many captions verbatim (RSICD), and vocab + encoding both tokenise
def _word_tokens(caption: str) -> tuple[str, ...]:
    global _treebank
    if _treebank is None:
        from nltk.tokenize import TreebankWordTokenizer

        _treebank = TreebankWordTokenizer()
    text = _BACKTICKS.sub(r" \1 ", caption.lower())
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        out.extend(t for t in _treebank.tokenize(sentence) if t not in PUNCTUATION)
    return tuple(out)


def _pad(ids: list[list[int]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([max(len(x), 1) for x in ids], dtype=torch.long)
    L = length if length is not None else int(lengths.max()) if ids else 1
    tokens = torch.full((len(ids), L), pad_id, dtype=torch.long)
    for b, x in enumerate(ids):
        if x:
            tokens[b, :len(x)] = torch.tensor(x[:L], dtype=torch.long)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return {"tokens": tokens, "lengths": lengths.clamp(max=L), "attention_mask": mask}


class Tokenizer:
    """Base class / protocol of the three tokenizers."""

    kind: str = ""
    pad_id: int = 0
    words: list[str] | None = None

    def encode(self, caption: str) -> list[int]:
        """Ids of one caption (without padding; at least one id)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Pad a batch. Returns ``tokens`` [B, L], ``lengths`` [B], ``attention_mask`` [B, L] (all long)."""
        return _pad(ids, self.pad_id)

    def state(self) -> dict:
        """JSON-able settings that :func:`tokenizer_from_state` turns back into an equal tokenizer."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ word vocab
class VocabTokenizer(Tokenizer):
    """GaLR-family word vocabulary.

    Args:
        words: ordered by id (id i is ``words[i-1]``; ``<unk>`` last).
        max_tokens: captions are cut to this many ids.
        drop_stopwords: drop stop-words instead of mapping them to ``<unk>``.
        source: where the words came from (a file path or "built from ..."); kept in ``state()`` so a resumed run
            or test.py still says which vocabulary it uses.
    """

    kind = "vocab"

    def __init__(self, words: Sequence[str], max_tokens: int = 47, drop_stopwords: bool = False,
                 source: str = "") -> None:
        words = list(words)
        if UNK not in words:
            words.append(UNK)
        self.words = words
        self.word2idx = {w: i + 1 for i, w in enumerate(words)}
        self.unk_id = self.word2idx[UNK]
        self.max_tokens = max_tokens
        self.drop_stopwords = drop_stopwords
        self.source = source

    def __len__(self) -> int:
        return len(self.words) + 1

    def encode(self, caption: str) -> list[int]:
        toks = word_tokens(caption)
        if self.drop_stopwords:
            toks = [t for t in toks if t not in ENGLISH_STOPWORDS]
        ids = [self.word2idx.get(t, self.unk_id) for t in toks][: self.max_tokens]
        return ids or [self.pad_id]

    def state(self) -> dict:
        return {"kind": self.kind, "words": list(self.words), "max_tokens": self.max_tokens,
                "drop_stopwords": self.drop_stopwords, "source": self.source}


def build_vocab(captions: Iterable[str], min_count: int = 5) -> list[str]:
    """Words (first-appearance order) seen at least ``min_count`` times, stop-words excluded, ``<unk>`` appended."""
    counter: Counter = Counter()
    for caption in captions:
        counter.update(t for t in word_tokens(caption) if t not in ENGLISH_STOPWORDS)
    return [w for w, n in counter.items() if n >= min_count] + [UNK]


def load_vocab_json(path: str | Path) -> list[str]:
    """Words ordered by id from a GaLR ``*_splits_vocab.json`` (``word2idx``/``idx2word``/``idx``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"vocabulary file not found: {path} (data.vocab). The *_splits_vocab.json files come from the GaLR / "
            "AMFMN repositories (github.com/xiaoyuan1996/GaLR, github.com/xiaoyuan1996/AMFMN; needed only to load "
            "their published checkpoints); set data.vocab=\"\" (the default) to build the vocabulary from the "
            "fold's training captions")
    data = json.loads(path.read_text())
    try:
        idx2word = data["idx2word"]
        words = [idx2word[str(i)] for i in range(1, int(data["idx"]))]
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: not a word2idx/idx2word/idx vocabulary ({e!r})") from None
    if any(data["word2idx"].get(w) != i + 1 for i, w in enumerate(words)):
        raise DataError(f"{path}: word2idx and idx2word disagree")
    return words


def save_vocab_json(words: Sequence[str], path: str | Path) -> None:
    """Write words (ordered by id, ``<unk>`` last) in the upstream JSON layout."""
    words = list(words) if UNK in words else list(words) + [UNK]
    data = {"word2idx": {w: i + 1 for i, w in enumerate(words)},
            "idx2word": {str(i + 1): w for i, w in enumerate(words)},
            "idx": len(words) + 1}
    Path(path).write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------------ BERT
_PIR_STRIP = re.compile(r"[,.'!?\"()*#:;~]")


def clean_caption_pir(caption: str, max_words: int = 30) -> str:
    """PIR's caption cleaning (METHODS.md A2): lower-case, strip ``,.'!?"()*#:;~``, ``-``/``/`` to spaces,
    collapse spaces, keep the first ``max_words`` words. (PIR raises on an empty result; rsitr keeps it empty.)"""
    text = _PIR_STRIP.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    return " ".join(text.split()[:max_words])


class BertTokenizer(Tokenizer):
    """WordPiece tokenizer loaded with ``transformers.AutoTokenizer`` from a local folder (no hub access)."""

    kind = "bert"

    def __init__(self, path: str | Path, max_tokens: int = 47, key: str = "data.tokenizer_path") -> None:
        self.ref = str(path)  # as configured (a pkg: reference stays one in checkpoints)
        path = Path(resolve_path(str(path), key))
        files = ("vocab.txt", "tokenizer.json")
        if not path.is_dir() or not any((path / f).is_file() for f in files):
            raise MissingFileError(
                f"BERT tokenizer folder {path} (data.tokenizer_path) is missing or has neither vocab.txt (WordPiece "
                "vocabulary, one token per line) nor tokenizer.json; save one with tokenizer.save_pretrained(DIR), "
                "e.g. from bert-base-uncased")
        from transformers import AutoTokenizer  # heavy import, only when a BERT tokenizer is used

        self.path = str(path)  # on disk
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            self.hf = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        else:  # a bare WordPiece vocab.txt (no tokenizer config): an uncased BERT tokenizer over it
            from transformers import BertTokenizer as HFBertTokenizer

            self.hf = HFBertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=True)
        self.pad_id = int(self.hf.pad_token_id or 0)
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, caption: str) -> list[int]:
        return list(self.hf(clean_caption_pir(caption), truncation=True, max_length=self.max_tokens)["input_ids"])

    def state(self) -> dict:
        return {"kind": self.kind, "path": self.ref, "max_tokens": self.max_tokens}


# ------------------------------------------------------------------------------------------------------ CLIP
class ClipTokenizer(Tokenizer):
    """open_clip BPE tokenizer; every batch is padded to the context length (77)."""

    kind = "clip"

    def __init__(self, model_name: str = "ViT-B-32") -> None:
        import open_clip  # heavy import, only when a CLIP tokenizer is used

        self.model_name = model_name
        self.tok = open_clip.get_tokenizer(model_name)
        self.context_length = int(getattr(self.tok, "context_length", 77) or 77)
        self.eot_id = int(self.tok.eot_token_id) if hasattr(self.tok, "eot_token_id") else None
        self.pad_id = 0

    def __len__(self) -> int:
        return int(getattr(self.tok, "vocab_size", 49408))

    def encode(self, caption: str) -> list[int]:
        row = self.tok([caption])[0].tolist()
        # open_clip pads with 0 after the end-of-text token; keep everything up to and including it
        n = len(row)
        while n > 1 and row[n - 1] == 0:
            n -= 1
        return row[:n]

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        return _pad(ids, self.pad_id, self.context_length)

    def state(self) -> dict:
        return {"kind": self.kind, "clip_model": self.model_name}


# --------------------------------------------------------------------------------------------------- factory
def build_tokenizer(cfg: DataCfg, train_captions: list[str] | None = None, built_from: str = "training captions"
                    ) -> Tokenizer:
    """Tokenizer chosen by ``data.tokenizer``.

    vocab: built from ``train_captions`` (min count 5; ``built_from`` says what they are, for the vocabulary's
    ``source``) unless ``data.vocab`` names a JSON file (the upstream files, for published checkpoints).
    """
    if cfg.tokenizer == "vocab":
        if cfg.vocab:
            words, source = load_vocab_json(cfg.vocab), f"file {cfg.vocab}"
        elif train_captions is not None:
            words, source = build_vocab(train_captions), f"built from {built_from} ({len(train_captions)} captions)"
        else:
            raise ConfigError("data.tokenizer 'vocab' needs data.vocab (a vocab JSON) or training captions")
        return VocabTokenizer(words, cfg.max_tokens, cfg.drop_stopwords, source)
    if cfg.tokenizer == "bert":
        if not cfg.tokenizer_path:
            raise ConfigError("data.tokenizer 'bert' needs data.tokenizer_path (a local tokenizer folder)")
        return BertTokenizer(cfg.tokenizer_path, cfg.max_tokens)
    if cfg.tokenizer == "clip":
        return ClipTokenizer(cfg.clip_model)
    raise ConfigError(f"unknown data.tokenizer '{cfg.tokenizer}' (vocab | bert | clip)")


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer whose :meth:`Tokenizer.state` was saved (e.g. in a checkpoint)."""
    kind = state.get("kind")
    if kind == "vocab":
        return VocabTokenizer(state["words"], int(state.get("max_tokens", 47)), bool(state.get("drop_stopwords")),
                              str(state.get("source", "")))
    if kind == "bert":
        return BertTokenizer(state["path"], int(state.get("max_tokens", 47)), "the checkpoint's tokenizer")
    if kind == "clip":
        return ClipTokenizer(state.get("clip_model", "ViT-B-32"))
    raise ValueError(f"unknown tokenizer state kind {kind!r}")


def _bert_tokenizer_files(path: str, key: str) -> list[RequiredFile]:
    what = "WordPiece vocabulary of bert-base-uncased (vocab.txt, or tokenizer.json from save_pretrained)"
    if not path:
        return [RequiredFile(key, "", f"local BERT tokenizer folder: {what}")]
    path = resolve_path(path, key)
    return [RequiredFile(key, str(Path(path) / "vocab.txt"), what, (str(Path(path) / "tokenizer.json"),))]


def tokenizer_required_files(cfg: DataCfg) -> list[RequiredFile]:
    """Files the tokenizer of ``cfg`` reads (checked with the model's before any data is loaded).

    vocab: ``data.vocab`` when set (none when the vocabulary is built from the captions); bert: ``vocab.txt`` or
    ``tokenizer.json`` in ``data.tokenizer_path``; clip: none (the BPE vocabulary ships with open_clip).
    """
    if cfg.tokenizer == "vocab" and cfg.vocab:
        return [RequiredFile("data.vocab", cfg.vocab, 'word vocabulary JSON (word2idx/idx2word/idx); data.vocab="" '
                                                      "builds one from the training captions")]
    if cfg.tokenizer == "bert":
        return _bert_tokenizer_files(cfg.tokenizer_path, "data.tokenizer_path")
    return []


def state_required_files(state: dict[str, Any]) -> list[RequiredFile]:
    """Files :func:`tokenizer_from_state` reads for a saved tokenizer (a BERT folder; word lists are in the state)."""
    if state.get("kind") == "bert":
        return _bert_tokenizer_files(str(state.get("path", "")), "the checkpoint's tokenizer (data.tokenizer_path)")
    return []


def vocab_report(tokenizer: Tokenizer, train_captions: Sequence[str], test_captions: Sequence[str],
                 min_count: int = 5, n_examples: int = 10) -> dict[str, Any]:
    """Which vocabulary a run uses and how many of its words come from the test captions.

    Two counts, over the words of the vocabulary that occur in test captions:

    * ``n_test_only``: they occur in no training caption at all (RSITMD's upstream file: 2, "extremely" and "20");
    * ``n_from_test``: they occur fewer than ``min_count`` times in the training captions, so a vocabulary built
      from those (:func:`build_vocab`) would not hold them: they are in it only thanks to the test captions
      (upstream files: RSITMD 81, RSICD 179, Sydney 3, UCM 0). A vocabulary built from training captions has 0 of
      both.

    Args:
        tokenizer: the run's tokenizer.
        train_captions: every caption of the training file (train and validation images).
        test_captions: the test captions the run evaluates on.
        min_count: the build rule's minimum count.

    Returns:
        ``{"tokenizer", "source", "n_words"}`` and, for word vocabularies, ``n_test_only``, ``n_from_test`` and
        ``from_test_examples`` (the first ``n_examples`` of the latter, in id order).
    """
    out: dict[str, Any] = {"tokenizer": tokenizer.kind, "n_words": len(tokenizer)}
    if tokenizer.kind == "bert":
        out["source"] = f"WordPiece from {getattr(tokenizer, 'path', '')}"
    elif tokenizer.kind == "clip":
        out["source"] = f"open_clip BPE ({getattr(tokenizer, 'model_name', '')})"
    if tokenizer.words is None:
        return out
    counts = Counter(t for c in train_captions for t in word_tokens(c))
    in_test = {t for c in test_captions for t in word_tokens(c)}
    from_test = [w for w in tokenizer.words if w in in_test and counts[w] < min_count]
    out.update(source=getattr(tokenizer, "source", "") or "unknown (a saved tokenizer without its source)",
               n_words=len(tokenizer.words), n_test_only=sum(counts[w] == 0 for w in from_test),
               n_from_test=len(from_test), from_test_examples=from_test[:n_examples])
    return out
