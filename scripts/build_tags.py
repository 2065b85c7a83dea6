"""Build KAMCL's tag knowledge from the training captions: per-image tag counts and the tag vocabulary.

    python scripts/build_tags.py --precomp data/rsitmd_precomp --vocab data/vocab/rsitmd_splits_vocab.json

Writes, into ``--out`` (default: the precomp folder), the upstream layout (https://github.com/mcx-mcx/KAMCL
``util/get_concept_tags.py``; METHODS.md C4):

* ``tags_label_th_<t>.txt``: one line per training image, ``<filename>\\t<word>:<count> <word>:<count> ...`` with the
  words of the image's captions, most frequent first (ties in first-seen order), counts > ``t`` (default 1) kept.
  Captions are grouped by image as training reads them (``data.precomp.load_split``): with one filename line per
  caption, consecutive equal names are one image, whatever its number of captions; with one line per image, the
  captions divide evenly.
* ``tags_label_th_<t>/tag_vocab_<n>.json``: the ``n`` (default 512) most frequent tags over all images (summed
  counts of the lines above, ties in first-seen order), restricted to the word vocabulary; ``.txt`` alongside, and
  ``all_words.txt`` (every vocabulary tag with its count).

Differences from upstream: lines are keyed by the image **filename** instead of the row number (upstream's loader
looked the row number up in a reshuffled split, so targets belonged to other images, METHODS.md D8), and the empty
"words" that upstream's single-space split produces (``"trees , and"`` -> ``['trees', '', '', 'and']``) are
dropped. Words are upstream's: every non-alphanumeric character becomes a space, then lower-case.
Without ``--vocab`` the word vocabulary is built from the same captions (rsitr's ``data.vocab: ""`` rule).
KAMCL with ``model.params.tags_path: ""`` applies the same rule (``models.kamcl.image_tags`` / ``tag_vocabulary``)
to the fold's training captions itself, so these files are optional.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import RsitrError, one_line  # noqa: E402
from data.precomp import load_split  # noqa: E402
from data.tokenize import build_vocab, load_vocab_json  # noqa: E402
from models.kamcl import TAG_THRESHOLD, caption_words, image_tags, tag_vocabulary  # noqa: E402,F401

__all__ = ["caption_words", "image_tags", "read_train_split", "build_tags", "main"]


def read_train_split(precomp: Path, encoding: str = "utf-8") -> tuple[list[str], list[list[str]]]:
    """(image filenames, the captions of each) of ``train_caps.txt`` / ``train_filename.txt``, grouped by the
    filename lines as training groups them (:func:`data.precomp.load_split`)."""
    split = load_split(precomp, "train", check_images=False, encoding=encoding)
    return list(split.filenames), [[split.captions[j] for j in group] for group in split.img2txt]


def build_tags(precomp: Path, out: Path, vocab_words: list[str] | None, size: int = 512,
               threshold: int = TAG_THRESHOLD) -> tuple[Path, Path]:
    """Write the tag files (module docstring) and return (tag file, tag vocabulary JSON)."""
    names, captions = read_train_split(precomp)
    if vocab_words is None:
        vocab_words = build_vocab(c for caps in captions for c in caps)
    per_image = [image_tags(caps, threshold) for caps in captions]
    top, ranked = tag_vocabulary(per_image, set(vocab_words), size)
    out.mkdir(parents=True, exist_ok=True)
    tag_file = out / f"tags_label_th_{threshold}.txt"
    with open(tag_file, "w", encoding="utf-8") as f:
        for name, tags in zip(names, per_image):
            f.write(name + "\t" + "".join(f"{w}:{c} " for w, c in tags) + "\n")
    vocab_dir = out / f"tags_label_th_{threshold}"
    vocab_dir.mkdir(exist_ok=True)
    vocab_json = vocab_dir / f"tag_vocab_{size}.json"
    vocab_json.write_text(json.dumps(top))
    (vocab_dir / f"tag_vocab_{size}.txt").write_text("\n".join(top))
    (vocab_dir / "all_words.txt").write_text("\n".join(f"{w} {c}" for w, c in ranked))
    return tag_file, vocab_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precomp", required=True, help="folder with train_caps.txt and train_filename.txt")
    ap.add_argument("--vocab", default="", help="word vocabulary JSON (word2idx/idx2word/idx); default: built")
    ap.add_argument("--out", default="", help="output folder (default: the precomp folder)")
    ap.add_argument("--size", type=int, default=512, help="tag vocabulary size")
    ap.add_argument("--threshold", type=int, default=TAG_THRESHOLD, help="keep words counted more than this per image")
    args = ap.parse_args(argv)
    precomp = Path(args.precomp)
    try:
        words = load_vocab_json(args.vocab) if args.vocab else None
        tag_file, vocab_json = build_tags(precomp, Path(args.out) if args.out else precomp, words, args.size,
                                          args.threshold)
    except RsitrError as e:  # a missing or malformed split file: one line, exit 2
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {tag_file} and {vocab_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
