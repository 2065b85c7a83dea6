"""GloVe word vectors from a local text file (the ``glove.840B.300d.txt`` layout), used to initialise SWAN's
word embedding.

Format: one entry per line, ``word v_1 ... v_d`` separated by single spaces. A handful of 840B entries contain
spaces inside the "word", so a line is split from the right: the last ``dim`` fields are the vector and the rest is
the word. Only the requested words are parsed, so reading the 5.6 GB 840B file costs one pass and little memory.

Word lookup follows SWAN's upstream (torchtext ``GloVe()`` = 840B, 300-d, case-sensitive): a vocabulary word that is
not found is retried once with ``-``, ``.`` and ``'`` removed and, if it contains ``/``, only its part before the
first ``/``. Rows of words that are still missing keep their random initialisation. A file that holds none of the
vocabulary's words (empty, or not GloVe) is an error (models/encoders/pretrained.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.files import RequiredFile
from models.encoders.pretrained import check_coverage

log = logging.getLogger(__name__)


def glove_fallback(word: str) -> str:
    """The second spelling upstream tries for a word that GloVe lacks (``e-mail`` -> ``email``, ``a/b`` -> ``a``)."""
    word = word.replace("-", "").replace(".", "").replace("'", "")
    return word.split("/")[0] if "/" in word else word


def read_glove(path: str | Path, words: set[str], dim: int = 300) -> dict[str, torch.Tensor]:
    """Read the vectors of ``words`` from a GloVe text file.

    Args:
        path: the text file (``glove.840B.300d.txt`` format).
        words: the words wanted; every other line is skipped unparsed.
        dim: vector size; lines with a different number of values are skipped.

    Returns:
        word -> float tensor [dim] for every wanted word present in the file (the first occurrence wins).
    """
    found: dict[str, torch.Tensor] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line[:line.find(" ")]
            if head not in words or head in found:
                continue  # a word with spaces inside never matches a vocabulary word, so no need to check it
            parts = line.rstrip("\n").rstrip(" ").rsplit(" ", dim)
            if len(parts) != dim + 1 or parts[0] != head:
                continue
            found[head] = torch.tensor([float(v) for v in parts[1:]])
    return found


def init_embedding_from_glove(weight: torch.Tensor, vocab_words: list[str], path: str | Path) -> tuple[int, int]:
    """Copy GloVe vectors into the rows of an embedding table (in place).

    Args:
        weight: embedding table [V + 1, dim]; row ``i`` belongs to ``vocab_words[i - 1]`` (row 0 is padding).
        vocab_words: words ordered by id.
        path: GloVe text file.

    Returns:
        (words found, words in the vocabulary).
    """
    dim = weight.shape[1]
    spellings = {w: (w, glove_fallback(w)) for w in vocab_words}
    table = read_glove(path, {s for pair in spellings.values() for s in pair}, dim)
    hits = 0
    with torch.no_grad():
        for i, word in enumerate(vocab_words, start=1):
            if i >= weight.shape[0]:
                break
            vec = next((table[s] for s in spellings[word] if s in table), None)
            if vec is not None:
                weight[i] = vec.to(weight.dtype)
                hits += 1
    log.info("GloVe %s: %d/%d vocabulary words found", path, hits, len(vocab_words))
    # words, not tensors: a real GloVe file finds most words, but a small vocabulary test file may find few, so the
    # rule here is "at least one word" (an empty or foreign file finds none)
    check_coverage(path, hits, len(vocab_words), f"the {dim}-d word embedding (GloVe vectors of the vocabulary words)",
                   "model.params.glove_path", min_share=0.0)
    return hits, len(vocab_words)


def glove_required_files(path: str, key: str = "model.params.glove_path") -> list[RequiredFile]:
    """The GloVe text file a pretrained word embedding reads (none when ``path`` is "")."""
    return [RequiredFile(key, path, "GloVe 840B 300-d vectors (text file glove.840B.300d.txt); or set "
                                    f"{key}='' for random word embeddings")] if path else []
