"""Build KAMCL's tag knowledge from the training captions: per-image tag counts and the tag vocabulary.

    python scripts/build_tags.py --precomp data/rsitmd_precomp --vocab data/vocab/rsitmd_splits_vocab.json

Writes, into ``--out`` (default: the precomp folder), the upstream layout (https://github.com/mcx-mcx/KAMCL
``util/get_concept_tags.py``; METHODS.md C4):

* ``tags_label_th_<t>.txt``: one line per training image, ``<filename>\\t<word>:<count> <word>:<count> ...`` with the
  words of the image's 5 captions, most frequent first (ties in first-seen order), counts > ``t`` (default 1) kept.
* ``tags_label_th_<t>/tag_vocab_<n>.json``: the ``n`` (default 512) most frequent tags over all images (summed
  counts of the lines above, ties in first-seen order), restricted to the word vocabulary; ``.txt`` alongside, and
  ``all_words.txt`` (every vocabulary tag with its count).

Differences from upstream: lines are keyed by the image **filename** instead of the row number (upstream's loader
looked the row number up in a reshuffled split, so targets belonged to other images, METHODS.md D8), and the empty
"words" that upstream's single-space split produces (``"trees , and"`` -> ``['trees', '', '', 'and']``) are
dropped. Words are upstream's: every non-alphanumeric character becomes a space, then lower-case.
Without ``--vocab`` the word vocabulary is built from the same captions (rsitr's ``data.vocab: ""`` rule).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.tokenize import build_vocab, load_vocab_json  # noqa: E402
from models.kamcl import tag_vocabulary  # noqa: E402

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def caption_words(caption: str) -> list[str]:
    """Upstream ``clean_str`` words: non-alphanumerics -> spaces, lower-case, split (empty strings dropped)."""
    return [w for w in _NON_ALNUM.sub(" ", caption).strip().lower().split(" ") if w]


def read_train_split(precomp: Path) -> tuple[list[str], list[list[str]]]:
    """(image filenames, their captions) of ``train_*.txt``; accepts one filename per image or per caption."""
    caps = (precomp / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    names = [n.strip() for n in (precomp / "train_filename.txt").read_text(encoding="utf-8").splitlines()]
    if len(names) == len(caps):
        names = names[::5]
    if len(caps) != 5 * len(names):
        raise ValueError(f"{precomp}: {len(caps)} captions do not fit {len(names)} images x 5")
    return names, [caps[5 * i:5 * i + 5] for i in range(len(names))]


def image_tags(captions: list[str], threshold: int = 1) -> list[tuple[str, int]]:
    """Words of one image's captions with their counts, most frequent first, counts > ``threshold``."""
    counts = Counter(w for c in captions for w in caption_words(c))
    ranked = sorted(counts.items(), key=lambda wc: wc[1], reverse=True)  # stable: ties keep first-seen order
    return [(w, c) for w, c in ranked if c > threshold]


def build_tags(precomp: Path, out: Path, vocab_words: list[str] | None, size: int = 512, threshold: int = 1
               ) -> tuple[Path, Path]:
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
    ap.add_argument("--threshold", type=int, default=1, help="keep words counted more than this per image")
    args = ap.parse_args(argv)
    precomp = Path(args.precomp)
    words = load_vocab_json(args.vocab) if args.vocab else None
    tag_file, vocab_json = build_tags(precomp, Path(args.out) if args.out else precomp, words, args.size,
                                      args.threshold)
    print(f"wrote {tag_file} and {vocab_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
