"""search/query.py ranking (used by scripts/search.py and the web app) without a trained model: cosine via FAISS,
model.similarity re-scoring for methods that declare ``pairwise_similarity`` (models/base.py)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.base import RetrievalModel
from search import query
from search.index import load_index, write_index


class Cosine(RetrievalModel):
    pass


class NegL2(RetrievalModel):
    """A pairwise score that is not the cosine: minus the Euclidean distance of the raw embeddings."""

    pairwise_similarity = True

    def similarity(self, img, txt):
        return -torch.cdist(img.float(), txt.float())


class UndeclaredNegL2(RetrievalModel):
    """Overrides ``similarity`` without declaring ``pairwise_similarity``: the contract says its score is the cosine."""

    def similarity(self, img, txt):
        return -torch.cdist(img.float(), txt.float())


def cosine_top(emb, q, k):
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (q[0].numpy() / q[0].norm().item())
    return np.argsort(-cos)[:k].tolist(), np.sort(cos)[::-1][:k]


def make_index(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 6)).astype(np.float32) * rng.uniform(0.2, 5, (40, 1)).astype(np.float32)
    write_index(tmp_path / "idx", [f"{i}.png" for i in range(40)], emb, images_root=".", checkpoint_id="c")
    return load_index(tmp_path / "idx"), emb


@pytest.mark.parametrize("model", [Cosine, UndeclaredNegL2])
def test_undeclared_models_use_the_index(tmp_path, model):
    index, emb = make_index(tmp_path)
    q = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    scores, ids = query.search_text(SimpleNamespace(model=model()), index, q, 5, shortlist=40)
    want_ids, want_scores = cosine_top(emb, q, 5)
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_declared_pairwise_similarity_rescores_with_the_model(tmp_path):
    index, emb = make_index(tmp_path)
    q = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    assert NegL2.pairwise_similarity and not UndeclaredNegL2.pairwise_similarity
    # shortlist = whole index: the result is exactly the model's own ranking (by distance, not by cosine)
    scores, ids = query.search_text(SimpleNamespace(model=NegL2()), index, q, 5, shortlist=40)
    dist = np.linalg.norm(emb - q.numpy(), axis=1)
    assert np.argsort(dist)[:5].tolist() != cosine_top(emb, q, 5)[0]  # the two rankings differ on this data
    assert ids == np.argsort(dist)[:5].tolist()
    np.testing.assert_allclose(scores, -np.sort(dist)[:5], atol=1e-5)
