"""Fold protocols: reproducible, disjoint, right sizes; fixed split; split files; leakage check; data folder untouched."""
from collections import Counter
from pathlib import Path

import pytest

from core.config import ConfigError
from data.folds import check_leakage, leakage_report, make_folds, write_split_files
from data.precomp import PrecompSplit, load_split, read_lines


def _toy(n: int = 50, scenes=("a", "b", "c")) -> PrecompSplit:
    names = [f"{scenes[i % len(scenes)]}_{i}.png" for i in range(n)]
    caps = [f"cap {j}" for j in range(5 * n)]
    return PrecompSplit(Path("."), "train", names, caps, [j // 5 for j in range(5 * n)],
                        [list(range(5 * i, 5 * i + 5)) for i in range(n)], [n_.split("_")[0] for n_ in names],
                        Path("images"))


@pytest.fixture(scope="module")
def rsitmd(shared_data):
    return load_split(shared_data / "precomp" / "rsitmd_precomp", "train", check_images=False)


def _listing(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.mark.parametrize("protocol", ["random_8020", "stratified"])
def test_random_protocols_reproducible_disjoint_and_fold_dependent(protocol):
    sp = _toy(50)
    a = make_folds(sp, protocol, 3, 0.2, base_seed=7)
    assert a == make_folds(sp, protocol, 3, 0.2, base_seed=7)
    assert a[0] != a[1] != a[2] and a != make_folds(sp, protocol, 3, 0.2, base_seed=8)
    for tr, va in a:
        assert not set(tr) & set(va) and sorted(tr + va) == list(range(50)) and tr == sorted(tr)
    # fold k of base seed s is fold 0 of base seed s + k
    assert make_folds(sp, protocol, 1, 0.2, base_seed=9)[0] == a[2]


def test_random_8020_sizes_match_upstream(rsitmd):
    tr, va = make_folds(rsitmd, "random_8020", 1, 0.2, 0)[0]
    assert (len(tr), len(va)) == (3432, 859)


def test_stratified_sizes_match_swan(rsitmd):
    tr, va = make_folds(rsitmd, "stratified", 1, 0.2, 0)[0]
    assert (len(tr), len(va)) == (3435, 856)
    per_scene = Counter(rsitmd.scenes)
    tr_scene = Counter(rsitmd.scenes[i] for i in tr)
    assert all(tr_scene[s] == round(0.8 * n) for s, n in per_scene.items())


def test_kfold_is_a_partition():
    sp = _toy(23)
    folds = make_folds(sp, "kfold", 5, 0.2, base_seed=1)
    vals = [va for _, va in folds]
    assert sorted(i for va in vals for i in va) == list(range(23))
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for tr, va in folds:
        assert sorted(tr + va) == list(range(23)) and not set(tr) & set(va)
    with pytest.raises(ValueError, match="n_folds >= 2"):
        make_folds(sp, "kfold", 1, 0.2, 0)


def test_fixed_split_reads_swan_files(shared_data, rsitmd):
    split_dir = shared_data / "splits" / "rsitmd_fixed"
    before = _listing(split_dir)
    folds = make_folds(rsitmd, "fixed", 2, 0.2, 0, str(split_dir))
    tr, va = folds[0]
    assert (len(tr), len(va)) == (3435, 856) and folds[1] == folds[0]
    assert rsitmd.filenames[va[0]] in set(read_lines(split_dir / "val_filename_verify.txt"))
    # SWAN's fixed split is a stratified one: per-scene train counts are round(0.8 n)
    tr_scene, per_scene = Counter(rsitmd.scenes[i] for i in tr), Counter(rsitmd.scenes)
    assert all(tr_scene[s] == round(0.8 * n) for s, n in per_scene.items())
    assert _listing(split_dir) == before


def test_fixed_split_errors(tmp_path):
    sp = _toy(10)
    with pytest.raises(ValueError, match="data.split_dir"):
        make_folds(sp, "fixed", 1, 0.2, 0)
    with pytest.raises(FileNotFoundError, match="train_filename_verify.txt"):
        make_folds(sp, "fixed", 1, 0.2, 0, str(tmp_path))
    (tmp_path / "train_filename_verify.txt").write_text("a_0.png\nzz_1.png\nqq_2.png\n")
    (tmp_path / "val_filename_verify.txt").write_text("b_1.png\n" * 5)
    with pytest.raises(ValueError, match=r"2 name\(s\) not in split 'train'.*zz_1.png, qq_2.png"):
        make_folds(sp, "fixed", 1, 0.2, 0, str(tmp_path))
    (tmp_path / "train_filename_verify.txt").write_text("a_0.png\nb_1.png\n")
    with pytest.raises(ValueError, match="in both train and val"):
        make_folds(sp, "fixed", 1, 0.2, 0, str(tmp_path))


def test_unknown_protocol_and_bad_ratio():
    with pytest.raises(ValueError, match="unknown data.protocol 'loo'"):
        make_folds(_toy(), "loo", 1, 0.2, 0)
    with pytest.raises(ValueError, match="val_ratio"):
        make_folds(_toy(), "random_8020", 1, 1.0, 0)


def test_folds_never_write_into_the_data_folder(shared_data, rsitmd):
    folder = shared_data / "precomp" / "rsitmd_precomp"
    before = _listing(folder)
    for protocol in ("random_8020", "stratified", "kfold"):
        make_folds(rsitmd, protocol, 3, 0.2, 0)
    assert _listing(folder) == before


def test_write_split_files_upstream_format(tmp_path):
    sp = _toy(6)
    write_split_files(tmp_path / "splits", sp, [4, 1], [2])
    d = tmp_path / "splits"
    assert sorted(p.name for p in d.iterdir()) == ["train_caps_verify.txt", "train_filename_verify.txt",
                                                  "val_caps_verify.txt", "val_filename_verify.txt"]
    assert read_lines(d / "train_filename_verify.txt") == ["b_4.png", "b_1.png"]  # one line per image
    assert read_lines(d / "val_filename_verify.txt") == ["c_2.png"] * 5  # one line per caption
    assert read_lines(d / "train_caps_verify.txt") == [f"cap {j}" for j in (20, 21, 22, 23, 24, 5, 6, 7, 8, 9)]
    assert read_lines(d / "val_caps_verify.txt") == [f"cap {j}" for j in range(10, 15)]
    # the written val files load back as a per-caption-layout split
    (d / "val_caps.txt").write_text((d / "val_caps_verify.txt").read_text())
    (d / "val_filename.txt").write_text((d / "val_filename_verify.txt").read_text())
    assert load_split(d, "val", check_images=False).img2txt == [[0, 1, 2, 3, 4]]


def _leak_splits(tmp_path):
    imgs = tmp_path / "images"
    imgs.mkdir()
    base = _toy(6, scenes=("s",))
    base.image_dir = imgs
    return base.subset([0, 1, 2], "train"), base.subset([3, 4], "val"), base.subset([2, 5], "test")


def test_leakage_report_by_name(tmp_path):
    train, val, test = _leak_splits(tmp_path)
    assert leakage_report({"train": train, "val": val}) == {"by_name": {}, "n_same_name": 0}
    rep = leakage_report({"train": train, "val": val, "test": test})  # s_2.png planted in train and test
    assert rep == {"by_name": {"train&test": ["s_2.png"]}, "n_same_name": 1}


def test_check_leakage_stops_on_a_test_name_in_train_or_val(tmp_path):
    train, val, test = _leak_splits(tmp_path)
    with pytest.raises(ConfigError, match=r"1 test image\(s\) are also train/val images \(x.yaml\): s_2.png;"):
        check_leakage({"train": train, "val": val, "test": test}, where=" (x.yaml)")
    many = _toy(8, scenes=("s",))
    many.image_dir = tmp_path / "images"
    with pytest.raises(ConfigError, match=r"7 test image\(s\).*: s_0.png, s_1.png, s_2.png, s_3.png, s_4.png, \.\.\."):
        check_leakage({"val": many.subset(range(7), "val"), "test": many.subset(range(8), "test")})
    # a union's test sets are keyed test/<member>: the same rule
    with pytest.raises(ConfigError, match=r"1 test image\(s\) are also train/val images: s_2.png;"):
        check_leakage({"train": train, "test/b": test}, near_dup=None)


def test_ucm_leakage_facts(shared_data, caplog):
    """The real UCM set (images under ../shared/data/ucm) at the default hash and threshold: no test image name in
    train, no training image near a test image; inside training one group, 102.jpg = 103.jpg (the same file twice)."""
    folder = shared_data / "ucm" / "ucm_precomp"
    if not (folder / "images").is_dir():
        pytest.skip("../shared/data/ucm is not available")
    train, test = (load_split(folder, s, check_images=False) for s in ("train", "test"))
    with caplog.at_level("INFO", logger="data.folds"):
        rep = check_leakage({"train": train, "test": test})
    assert (train.n_images, test.n_images, rep["n_same_name"], rep["n_hashed"]) == (1890, 210, 0, 2100)
    assert rep["near_dup"] == {"hash": "phash", "hash_size": 16, "bits": 256, "threshold": 64}
    assert rep["test_near_dups"] == [] and rep["removed"] == [] and rep["n_removed"] == 0
    assert rep["train_near_dups"] == [[["train", "102.jpg"], ["train", "103.jpg"]]] and rep["n_train_near_dups"] == 1
    assert "0 training image(s) are near-duplicates of a test image" in caplog.text
    assert "1 near-duplicate copies inside training (1 group(s)), e.g. train:102.jpg = train:103.jpg" in caplog.text
