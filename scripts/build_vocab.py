"""Build a GaLR-family word vocabulary (``word2idx``/``idx2word``/``idx`` JSON) from precomp caption files.

    python scripts/build_vocab.py --precomp data/rsitmd_precomp --splits train test --out rsitmd_vocab.json
    python scripts/build_vocab.py --captions a_caps.txt b_caps.txt --min-count 5 --compare shipped_vocab.json

Rules (METHODS.md A2, data/tokenize.py): lower-case, Treebank tokens (with the sentence and backtick pre-steps that
stand in for ``word_tokenize``), the A2 punctuation and NLTK English stop-words dropped, words seen at least
``--min-count`` times in first-appearance order, ``<unk>`` last. The shipped rsitmd/rsicd/sydney files are
reproduced exactly from the train + test captions. ``--compare`` prints the words only in one of the two files and
whether the id order agrees; the exit code is 0 when the vocabularies are identical, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.precomp import read_lines  # noqa: E402
from data.tokenize import build_vocab, load_vocab_json, save_vocab_json  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--precomp", help="a *_precomp folder; reads <split>_caps.txt for every --splits entry")
    src.add_argument("--captions", nargs="+", help="caption files, one caption per line")
    p.add_argument("--splits", nargs="+", default=["train", "test"], help="splits read with --precomp")
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--out", help="write the vocabulary JSON here")
    p.add_argument("--compare", help="a vocabulary JSON to compare with")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = [Path(args.precomp) / f"{s}_caps.txt" for s in args.splits] if args.precomp else map(Path, args.captions)
    captions: list[str] = []
    for f in files:
        if not f.is_file():
            print(f"error: caption file not found: {f}", file=sys.stderr)
            return 2
        captions += read_lines(f)
    words = build_vocab(captions, args.min_count)
    print(f"{len(words)} words (incl. <unk>) from {len(captions)} captions")
    if args.out:
        save_vocab_json(words, args.out)
        print(f"wrote {args.out}")
    if args.compare:
        other = load_vocab_json(args.compare)
        only_built, only_other = sorted(set(words) - set(other)), sorted(set(other) - set(words))
        print(f"only here ({len(only_built)}): {' '.join(only_built)}")
        print(f"only in {args.compare} ({len(only_other)}): {' '.join(only_other)}")
        print(f"same ids: {words == other}")
        return 0 if words == other else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
