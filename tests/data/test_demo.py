"""The generated demo set: deterministic bytes, precomp layout and counts, learnable captions, safe concurrent creation."""
import hashlib
import multiprocessing as mp
from collections import Counter

import numpy as np
import pytest

from data.demo import N_TEST, N_TRAIN, SCENES, ensure_demo, generate
from data.precomp import load_split, read_lines
from data.stopwords import ENGLISH_STOPWORDS
from data.tokenize import build_vocab, word_tokens


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a", n_train=16, n_test=8)
    generate(tmp_path / "b", n_train=16, n_test=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo(tmp_path_factory.mktemp("demo_root"))


def test_layout_and_counts(demo):
    assert demo.name == "demo_precomp"
    assert len(read_lines(demo / "train_filename.txt")) == N_TRAIN  # one line per image
    assert len(read_lines(demo / "test_filename.txt")) == 5 * N_TEST  # one line per caption
    train, test = load_split(demo, "train"), load_split(demo, "test")  # every image exists
    assert (train.n_images, train.n_captions, test.n_images, test.n_captions) == (N_TRAIN, 5 * N_TRAIN, N_TEST,
                                                                                   5 * N_TEST)
    assert set(train.scenes) == set(test.scenes) == set(SCENES)
    assert Counter(train.scenes)["lake"] == N_TRAIN // len(SCENES)
    assert not set(train.filenames) & set(test.filenames)
    from PIL import Image
    with Image.open(train.image_path(0)) as im:
        assert im.size == (96, 96) and im.mode == "RGB"


def test_captions_differ_and_vocab_is_small_and_frequent(demo):
    train = load_split(demo, "train")
    for group in train.img2txt[:200]:
        assert len({train.captions[j] for j in group}) == 5  # five different captions per image
    vocab = build_vocab(train.captions)
    counts = Counter(t for c in train.captions for t in word_tokens(c))
    assert 60 <= len(vocab) <= 150
    assert min(counts.values()) >= 5  # no rare word at all: every non-stop-word is in the vocabulary
    assert set(vocab[:-1]) == {w for w in counts if w not in ENGLISH_STOPWORDS}


def test_captions_state_what_was_drawn(demo):
    train = load_split(demo, "train")
    i = train.scenes.index("residential")
    caps = [train.captions[j] for j in train.img2txt[i]]
    colour = next(c for c in ("red", "white", "gray", "orange") if c in caps[0].split())
    assert all(colour in c.split() for c in caps)  # the roof colour is in every caption
    from PIL import Image
    with Image.open(train.image_path(i)) as im:
        colours = {tuple(px) for px in np.asarray(im).reshape(-1, 3).tolist()}
    assert len(colours) > 30  # noisy ground, not flat colour


def _call(root, q):
    q.put(str(ensure_demo(root, n_train=80, n_test=16)))


def test_concurrent_ensure_demo(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_call, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert {q.get(), q.get()} == {str(tmp_path / "demo_precomp")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_precomp"]  # no temp folder left behind
    assert load_split(tmp_path / "demo_precomp", "test").n_images == 16
