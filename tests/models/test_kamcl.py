"""KAMCL: tiny forward/backward, MoCo logits, momentum update and queue arithmetic, filename-keyed tag targets,
text padding (fixed vs compat) and bit-exact queue state through a checkpoint round trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import load_config
from losses import build_criterion
from models.base import ModelContext
from models.registry import build_model
from scripts.build_tags import build_tags

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["plane", "airport", "green", "trees", "river", "road", "many", "buildings", "<unk>"]
CAPS = {"airport_1.png": ["many planes near the airport", "a plane and a plane", "the airport has a plane",
                          "plane plane airport", "green trees"],
        "river_2.png": ["a river and a road", "the river near green trees", "green trees and a river",
                        "road road river", "many buildings"]}


@pytest.fixture(scope="module")
def tags(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("precomp")
    (d / "train_caps.txt").write_text("\n".join(c for caps in CAPS.values() for c in caps) + "\n")
    (d / "train_filename.txt").write_text("\n".join(CAPS) + "\n")
    tag_file, vocab = build_tags(d, d, WORDS, size=512)
    return [f"model.params.tags_path={tag_file}", f"model.params.tag_vocab_path={vocab}"]


def _ctx() -> ModelContext:
    return ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1)


def _build(overrides: list[str], seed: int = 0):
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", overrides)
    torch.manual_seed(seed)
    return cfg, build_model(cfg.model, _ctx())


def _batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4, 2, 3, 1][:b])
    tokens = torch.zeros(b, 5, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(1, len(WORDS) + 1, (n,), generator=g)
    return {"images": torch.randn(b, 3, 32, 32, generator=g), "tokens": tokens, "lengths": lengths,
            "img_ids": torch.arange(b), "filenames": ["airport_1.png", "river_2.png", "x_9.png", "airport_1.png"][:b]}


def test_tiny_forward_backward_and_loss_terms(tags) -> None:
    cfg, model = _build(tags)
    model.train()
    batch = _batch()
    model.on_train_step_start()
    out = model(batch)
    assert out["logits_img"].shape == (4, 1 + 256) and out["concept_img"].shape == (4, 512)
    crit = build_criterion(cfg.loss)
    assert crit.active(0) == ["triplet", "moco_ce"] and crit.active(1) == ["triplet", "moco_ce", "concept_bce"]
    res = crit(out, batch, epoch=1)
    res["loss"].backward()
    named = dict(model.named_parameters())
    for name in ("visual_q.backbone.conv1.weight", "visual_q.low_fc.weight", "visual_q.concept.weight",
                 "text_q.uniskip.cell.weight_hr.weight", "text_q.tag_linear.weight", "text_q.gpo_seq.linear.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in named.items() if n.startswith(("visual_k.", "text_k.")))


class _Fixed(nn.Module):
    """An encoder stand-in that returns fixed embeddings (and zero concepts)."""

    locked = False  # not a locked BERT tower (KAMCL.forward asks)

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out, torch.zeros_like(self.out)


def test_moco_logits_then_enqueue_hand_computed(tags) -> None:
    """Queries v_q = [3 e0, 4 e1], t_q = [e1, e0 + e1]; keys v_k = [e0, e2], t_k = [e0, e1]; queue_tx starts with
    columns [e1, e0], queue_im with [e1, e2], every other column e3 (orthogonal to all). By hand, with T = 0.07:
    logits_img = [[1 | 0, 1, 0...], [1 | 1, 0, 0...]] / T, logits_txt = [[0 | 1, 0, 0...], [0 | 1/sqrt2, 0, 0...]] / T;
    then the keys are enqueued at the pointer (had the logits read the queue after that, rows 0 and 1 of
    logits_img would be swapped)."""
    _, model = _build(tags)
    model.train()
    e = torch.eye(512)
    model.visual_q, model.visual_k = _Fixed(torch.stack([3 * e[0], 4 * e[1]])), _Fixed(torch.stack([e[0], e[2]]))
    model.text_q, model.text_k = _Fixed(torch.stack([e[1], e[0] + e[1]])), _Fixed(torch.stack([e[0], e[1]]))
    with torch.no_grad():
        model.queue_tx.copy_(e[3][:, None].expand(512, 256))
        model.queue_im.copy_(e[3][:, None].expand(512, 256))
        model.queue_tx[:, 0], model.queue_tx[:, 1] = e[1], e[0]
        model.queue_im[:, 0], model.queue_im[:, 1] = e[1], e[2]
    out = model(_batch(2))
    want_img, want_txt = torch.zeros(2, 257), torch.zeros(2, 257)
    want_img[0, [0, 2]] = 1.0
    want_img[1, [0, 1]] = 1.0
    want_txt[0, 1] = 1.0
    want_txt[1, 1] = 2 ** -0.5
    torch.testing.assert_close(out["logits_img"], want_img / 0.07)
    torch.testing.assert_close(out["logits_txt"], want_txt / 0.07)
    torch.testing.assert_close(model.queue_im[:, :2], torch.stack([e[0], e[2]], 1))
    torch.testing.assert_close(model.queue_tx[:, :2], torch.stack([e[0], e[1]], 1))
    torch.testing.assert_close(model.queue_im[:, 2:], e[3][:, None].expand(512, 254))  # only 2 slots written
    assert int(model.queue_ptr_im) == 2 and int(model.queue_ptr_tx) == 2


def test_eval_forward_leaves_the_queues_alone(tags) -> None:
    _, model = _build(tags)
    model.eval()
    before = model.queue_im.clone()
    with torch.no_grad():
        out = model(_batch())
    assert "logits_img" not in out and torch.equal(model.queue_im, before) and int(model.queue_ptr_im) == 0


def test_queue_wraps_around() -> None:
    _, model = _build(["model.params.queue_size=5"])
    keys = torch.arange(3 * 512, dtype=torch.float).view(3, 512)
    model.queue_ptr_im[0] = 3
    model.enqueue("im", keys)  # slots 3, 4, 0
    assert int(model.queue_ptr_im) == 1
    torch.testing.assert_close(model.queue_im[:, 3], keys[0])
    torch.testing.assert_close(model.queue_im[:, 4], keys[1])
    torch.testing.assert_close(model.queue_im[:, 0], keys[2])
    big = -torch.arange(7 * 512, dtype=torch.float).view(7, 512)
    model.enqueue("im", big)  # more keys than slots: the last 5 are kept, written from slot 1
    assert int(model.queue_ptr_im) == 1
    for j in range(5):
        torch.testing.assert_close(model.queue_im[:, (1 + j) % 5], big[2 + j])


def test_momentum_update_arithmetic() -> None:
    _, model = _build(["model.params.momentum=0.9"])
    pq = model.visual_q.concept.weight
    pk = model.visual_k.concept.weight
    with torch.no_grad():
        pq.fill_(1.0)
        pk.fill_(3.0)
        model.text_q.to_out.bias.fill_(-2.0)
        model.text_k.to_out.bias.fill_(0.0)
    model.on_train_step_start()
    torch.testing.assert_close(pk, torch.full_like(pk, 0.9 * 3 + 0.1 * 1))
    torch.testing.assert_close(model.text_k.to_out.bias, torch.full((512,), -0.2))
    torch.testing.assert_close(pq, torch.ones_like(pq))  # the query side is untouched
    bn_q, bn_k = model.visual_q.backbone.bn1, model.visual_k.backbone.bn1
    assert bn_k.running_mean is not bn_q.running_mean  # buffers are the key encoder's own (not averaged)


def test_momentum_zip_stops_at_the_shorter_encoder() -> None:
    """Upstream zips the visual and text (query, key) parameter lists: only the first min(#visual, #text) key
    parameters of each encoder move (momentum_zip / upstream_compat); rsitr's default moves all of them."""
    for sets, zipped in (([], False), (["model.params.momentum_zip=true"], True), (["model.upstream_compat=true"], True)):
        _, model = _build(["model.params.momentum=0.9"] + sets)
        vis_k, txt_k = list(model.visual_k.parameters()), list(model.text_k.parameters())
        n = min(len(vis_k), len(txt_k))
        assert len(txt_k) == n < len(vis_k)  # ResNet-18 visual encoder: more parameters than the text one
        with torch.no_grad():
            for p in (*model.visual_q.parameters(), *model.text_q.parameters()):
                p.fill_(1.0)
            for p in (*vis_k, *txt_k):
                p.fill_(3.0)
        model.on_train_step_start()
        moved = [torch.allclose(p, torch.full_like(p, 0.9 * 3 + 0.1 * 1)) for p in (*vis_k, *txt_k)]
        kept = [bool((p == 3.0).all()) for p in (*vis_k, *txt_k)]
        expect = [True] * len(vis_k) + [True] * len(txt_k)
        if zipped:
            expect = [i < n for i in range(len(vis_k))] + [True] * len(txt_k)
        assert moved == expect, sets
        assert kept == [not e for e in expect], sets


def test_tag_targets_are_looked_up_by_filename(tags) -> None:
    _, model = _build(tags)
    y = model.tag_target(["river_2.png", "airport_1.png", "unknown.png", "/some/dir/river_2.png"])
    tag_words = [w for w in WORDS if model.token_to_tag[WORDS.index(w) + 1] >= 0]
    col = {w: int(model.token_to_tag[WORDS.index(w) + 1]) for w in tag_words}
    # river_2: river x4 is the most frequent word ("a" x3); road 3 -> 0.75, green 2 -> 0.5, trees 2 -> 0.5;
    # "many"/"buildings" appear once (threshold: counts > 1) -> 0
    assert y[0, col["river"]] == 1.0 and y[0, col["road"]] == 0.75 and y[0, col["green"]] == 0.5
    assert y[0, col["trees"]] == 0.5 and ("many" not in col or y[0, col["many"]] == 0)
    # airport_1: "plane" x5 is the max ("planes" is another word); airport x3 -> 0.6
    assert y[1, col["plane"]] == 1.0 and abs(float(y[1, col["airport"]]) - 0.6) < 1e-6
    assert y[2].abs().sum() == 0 and torch.equal(y[3], y[0])


def test_text_padding_masked_unless_compat(tags) -> None:
    b = _batch()
    wide = {"tokens": torch.cat([b["tokens"], torch.zeros(4, 6, dtype=torch.long)], 1), "lengths": b["lengths"]}
    _, model = _build(tags)
    model.eval()
    with torch.no_grad():
        full, alone = model.encode_text(b), model.encode_text({"tokens": b["tokens"][3:], "lengths": b["lengths"][3:]})
        torch.testing.assert_close(model.encode_text(wide), full)
    torch.testing.assert_close(alone, full[3:], rtol=1e-5, atol=1e-5)  # independent of the batch's longest caption
    _, compat = _build(tags + ["model.upstream_compat=true"])
    compat.eval()
    with torch.no_grad():
        c_full = compat.encode_text(b)
        c_alone = compat.encode_text({"tokens": b["tokens"][3:], "lengths": b["lengths"][3:]})
    assert not torch.allclose(c_alone, c_full[3:], atol=1e-4)  # upstream pools the padding steps too


def test_multi_hot_marks_caption_tags(tags) -> None:
    _, model = _build(tags)
    tokens = torch.tensor([[1, 2, 1, 0], [9, 0, 0, 0]])  # plane airport plane | <unk>
    m = model.tag_multi_hot(tokens)
    cols = {int(model.token_to_tag[1]), int(model.token_to_tag[2])}
    assert set(torch.nonzero(m[0]).flatten().tolist()) == cols and m[1].sum() == 0


def test_queue_state_round_trips_bit_exact(tags, tmp_path: Path) -> None:
    _, model = _build(tags)
    model.train()
    for _ in range(2):
        model.on_train_step_start()
        model(_batch())
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    _, fresh = _build(tags, seed=123)
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    fresh.load_state_dict(state)
    for name in ("queue_im", "queue_tx", "queue_ptr_im", "queue_ptr_tx", "visual_k.concept.weight", "token_to_tag"):
        assert torch.equal(fresh.state_dict()[name], model.state_dict()[name]), name
    assert int(fresh.queue_ptr_im) == 8


def test_tag_vocabulary_is_ranked_over_the_training_images_only(tags, tmp_path) -> None:
    """tag_vocab_from: train ranks the tags over ctx.train_images, exactly as build_tags.py does on those images alone;
    a word only a held-out image uses is no tag. tag_vocab_from: file keeps the file's vocabulary."""
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", tags)
    ctx = ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1, train_images=["airport_1.png"])
    model = build_model(cfg.model, ctx)
    (tmp_path / "train_caps.txt").write_text("\n".join(CAPS["airport_1.png"]) + "\n")  # the training image alone
    (tmp_path / "train_filename.txt").write_text("airport_1.png\n")
    _, vocab = build_tags(tmp_path, tmp_path, WORDS, size=512)
    expect = json.loads(vocab.read_text())
    assert "river" not in expect and "plane" in expect  # river: only in the held-out image's captions
    tag_of = {WORDS[i - 1]: int(t) for i, t in enumerate(model.token_to_tag.tolist()) if i > 0 and t >= 0}
    assert tag_of == {w: i for i, w in enumerate(expect)}
    # targets keep every image (held-out ones are never trained on), indexed by the ranked vocabulary
    assert model.tag_targets["airport_1.png"][tag_of["plane"]] == 1.0
    file_model = build_model(load_config(ROOT / "configs/tests/tiny_kamcl.yaml",
                                         tags + ["model.params.tag_vocab_from=file"]).model, ctx)
    assert "river" in {WORDS[i - 1] for i, t in enumerate(file_model.token_to_tag.tolist()) if i > 0 and t >= 0}
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="model.params.tag_vocab_from must be train or file"):
        build_model(load_config(ROOT / "configs/tests/tiny_kamcl.yaml",
                                tags + ["model.params.tag_vocab_from=all"]).model, ctx)


def test_a_malformed_tag_line_names_file_and_line(tmp_path) -> None:
    from core.errors import DataError
    bad = tmp_path / "tags.txt"
    bad.write_text("airport_1.png\tplane:5 airport:3\nriver_2.png\triver:two\n")
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", [f"model.params.tags_path={bad}"])
    with pytest.raises(DataError, match=rf"{bad.name}:2: expected"):
        build_model(cfg.model, ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1, train_images=["x.png"]))


def _train_ctx(names: list[str], captions: list[list[str]] | None = None) -> ModelContext:
    return ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1, train_images=names, train_captions=captions)


def test_tags_built_from_the_training_captions_equal_build_tags_files(tmp_path) -> None:
    """tags_path: "" builds, from ctx.train_captions, the tags build_tags.py writes for the same training images
    (3 and 6 captions per image here, one filename line per caption): same tag vocabulary, same targets."""
    data = {"airport_1.png": CAPS["airport_1.png"][:3], "river_2.png": CAPS["river_2.png"] + ["river river road"]}
    (tmp_path / "train_caps.txt").write_text("".join(c + "\n" for caps in data.values() for c in caps))
    (tmp_path / "train_filename.txt").write_text("".join(n + "\n" for n, caps in data.items() for _ in caps))
    tag_file, _ = build_tags(tmp_path, tmp_path, WORDS, size=512)
    names = list(data)
    from_file = build_model(load_config(ROOT / "configs/tests/tiny_kamcl.yaml",
                                        [f"model.params.tags_path={tag_file}"]).model, _train_ctx(names))
    built = build_model(load_config(ROOT / "configs/tests/tiny_kamcl.yaml").model,
                        _train_ctx(names, list(data.values())))
    assert torch.equal(built.token_to_tag, from_file.token_to_tag) and int((built.token_to_tag >= 0).sum()) >= 4
    assert built.tag_targets.keys() == from_file.tag_targets.keys() == set(names)
    for n in names:
        assert torch.equal(built.tag_targets[n], from_file.tag_targets[n]), n
    col = {w: int(built.token_to_tag[WORDS.index(w) + 1]) for w in ("river", "road", "plane")}
    # river_2.png: river 6 times (the most), road 4 -> 4/6; airport_1.png: plane 3 of its 3 captions' 4 -> 1.0
    assert built.tag_targets["river_2.png"][col["river"]] == 1.0
    assert float(built.tag_targets["river_2.png"][col["road"]]) == pytest.approx(4 / 6)
    assert built.tag_targets["airport_1.png"][col["plane"]] == 1.0


def test_training_without_usable_tags_stops_with_one_line(tmp_path) -> None:
    from core.errors import ConfigError, DataError, MissingFileError

    def build(tags_path, ctx):
        cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", [f"model.params.tags_path={tags_path}"])
        return build_model(cfg.model, ctx)

    names = list(CAPS)
    with pytest.raises(MissingFileError, match=r"model.params.tags_path: .*nope.txt not found.*tags_path=''"):
        build(tmp_path / "nope.txt", _train_ctx(names))
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("00001.tif\tplane:3 airport:2\n00002.tif\triver:4\n")
    with pytest.raises(DataError, match=r"foreign.txt: none of its 2 image names is one of the 2 training images"):
        build(foreign, _train_ctx(names))
    no_words = tmp_path / "no_words.txt"
    no_words.write_text("airport_1.png\tthe:4 a:3\nriver_2.png\tand:2\n")
    with pytest.raises(DataError, match="hold no word of the run's vocabulary"):
        build(no_words, _train_ctx(names))
    with pytest.raises(ConfigError, match="no training captions"):
        build("", _train_ctx(names))


def test_built_without_training_data_needs_no_tag_file(tmp_path) -> None:
    """test.py and inference build the model without training data: the checkpoint's token_to_tag is loaded over it,
    so a tag file that is not there (any more) is no error."""
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", [f"model.params.tags_path={tmp_path / 'gone.txt'}"])
    model = build_model(cfg.model, _ctx())
    assert (model.token_to_tag < 0).all() and model.tag_targets == {}
