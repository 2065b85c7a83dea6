"""scripts/build_tags.py on the real RSITMD training captions: per-image counts against an independent count, the
filename keying and the tag vocabulary ranking."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from scripts.build_tags import caption_words, main

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PRECOMP = SHARED / "precomp" / "rsitmd_precomp"
VOCAB = SHARED / "vocab" / "rsitmd_splits_vocab.json"


def test_caption_words_follow_upstream_clean_str() -> None:
    assert caption_words("Many green trees, and a river-side road.") == \
        ["many", "green", "trees", "and", "a", "river", "side", "road"]
    assert caption_words("") == []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not (PRECOMP / "train_caps.txt").is_file() or not VOCAB.is_file():
        pytest.skip(f"{PRECOMP} or {VOCAB} not available")
    out = tmp_path_factory.mktemp("tags")
    assert main(["--precomp", str(PRECOMP), "--vocab", str(VOCAB), "--out", str(out)]) == 0
    lines = (out / "tags_label_th_1.txt").read_text().splitlines()
    vocab = json.loads((out / "tags_label_th_1" / "tag_vocab_512.json").read_text())
    return lines, vocab


def _independent_counts() -> tuple[list[str], list[Counter]]:
    caps = (PRECOMP / "train_caps.txt").read_text().splitlines()
    names = (PRECOMP / "train_filename.txt").read_text().split()
    counts = [Counter(t.lower() for c in caps[5 * i:5 * i + 5] for t in re.findall(r"[A-Za-z0-9]+", c))
              for i in range(len(names))]
    return names, counts


def test_per_image_counts_keyed_by_filename(built) -> None:
    lines, _ = built
    names, counts = _independent_counts()
    assert len(lines) == len(names) == 4291
    for line, name, cnt in zip(lines, names, counts):
        key, _, rest = line.partition("\t")
        assert key == name
        parsed = [(w, int(c)) for w, c in (x.rsplit(":", 1) for x in rest.split())]
        assert dict(parsed) == {w: c for w, c in cnt.items() if c > 1}
        assert [c for _, c in parsed] == sorted((c for _, c in parsed), reverse=True)


def test_first_image_line_by_hand(built) -> None:
    lines, _ = built
    # baseballfield_452.tif: "the" appears in all five captions more than once; "red" in four of them
    key, _, rest = lines[0].partition("\t")
    tags = dict((w, int(c)) for w, c in (x.rsplit(":", 1) for x in rest.split()))
    caps = (PRECOMP / "train_caps.txt").read_text().splitlines()[:5]
    assert key == "baseballfield_452.tif"
    assert tags["red"] == sum(len(re.findall(r"\bred\b", c.lower())) for c in caps)
    assert tags["field"] == sum(len(re.findall(r"\bfield\b", c.lower())) for c in caps)


def test_tag_vocabulary_is_the_top_512_vocabulary_words(built) -> None:
    _, vocab = built
    words = set(json.loads(VOCAB.read_text())["word2idx"])
    _, counts = _independent_counts()
    total: Counter = Counter()
    for cnt in counts:
        total.update({w: c for w, c in cnt.items() if c > 1})
    ranked = sorted(((c, w) for w, c in total.items() if w in words), reverse=True)
    assert len(vocab) == 512 and len(set(vocab)) == 512 and set(vocab) <= words
    cut = total[vocab[-1]]
    assert {w for c, w in ranked if c > cut} <= set(vocab)  # everything strictly above the cut is in
    assert all(total[a] >= total[b] for a, b in zip(vocab, vocab[1:]))  # ordered by total count
    assert "the" not in vocab and "a" not in vocab  # stop-words are not vocabulary words


# one filename line per caption, 3 / 7 / 5 captions: names[::5] would read a.png's line off captions of b.png
VARYING = {"a.png": ["red roof red roof", "a red roof", "roof"],
           "b.png": ["green field", "green green field", "a field", "field field", "trees", "trees near field",
                     "green"],
           "c.png": ["a river", "the river bends", "river and road", "road", "the road"]}


def test_captions_grouped_by_their_filename_lines(tmp_path) -> None:
    (tmp_path / "train_caps.txt").write_text("".join(c + "\n" for caps in VARYING.values() for c in caps))
    (tmp_path / "train_filename.txt").write_text("".join(n + "\n" for n, caps in VARYING.items() for _ in caps))
    assert main(["--precomp", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "tags_label_th_1.txt").read_text().splitlines()
    got = {}
    for line in lines:
        key, _, rest = line.partition("\t")
        got[key] = {w: int(c) for w, c in (x.rsplit(":", 1) for x in rest.split())}
    want = {n: {w: c for w, c in Counter(w for cap in caps for w in re.findall(r"[a-z]+", cap)).items() if c > 1}
            for n, caps in VARYING.items()}
    assert got == want
    assert want["a.png"] == {"red": 3, "roof": 4} and want["b.png"] == {"green": 4, "field": 6, "trees": 2}


def test_a_bad_layout_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "train_caps.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "train_filename.txt").write_text("a.png\nb.png\n")
    assert main(["--precomp", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train_filename.txt has 2 lines" in err
