"""search/query.py ranking (used by scripts/search.py and the web app) without a trained model: cosine via FAISS,
model.similarity re-scoring otherwise."""
from types import SimpleNamespace

import numpy as np
import torch

from models.base import RetrievalModel
from search import query
from search.index import load_index, write_index


class Cosine(RetrievalModel):
    pass


class NegL2(RetrievalModel):
    """A pairwise score that is not the cosine: minus the Euclidean distance of the raw embeddings."""

    def similarity(self, img, txt):
        return -torch.cdist(img.float(), txt.float())


def make_index(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 6)).astype(np.float32) * rng.uniform(0.2, 5, (40, 1)).astype(np.float32)
    write_index(tmp_path / "idx", [f"{i}.png" for i in range(40)], emb, images_root=".", checkpoint_id="c")
    return load_index(tmp_path / "idx"), emb


def test_cosine_models_use_the_index(tmp_path):
    index, emb = make_index(tmp_path)
    q = torch.randn(1, 6)
    scores, ids = query.search_text(SimpleNamespace(model=Cosine()), index, q, 5, shortlist=10)
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (q[0].numpy() / q[0].norm().item())
    assert ids == np.argsort(-cos)[:5].tolist()
    np.testing.assert_allclose(scores, np.sort(cos)[::-1][:5], atol=1e-5)


def test_custom_similarity_rescores_with_the_model(tmp_path):
    index, emb = make_index(tmp_path)
    q = torch.randn(1, 6)
    assert query.custom_similarity(NegL2()) and not query.custom_similarity(Cosine())
    # shortlist = whole index: the result is exactly the model's own ranking (by distance, not by cosine)
    scores, ids = query.search_text(SimpleNamespace(model=NegL2()), index, q, 5, shortlist=40)
    dist = np.linalg.norm(emb - q.numpy(), axis=1)
    assert ids == np.argsort(dist)[:5].tolist()
    np.testing.assert_allclose(scores, -np.sort(dist)[:5], atol=1e-5)
