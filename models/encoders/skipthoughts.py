"""Uni-skip GRU sentence encoder (Kiros et al., "Skip-Thought Vectors", NeurIPS 2015), as used by AMFMN, GaLR and KAMCL.

The GaLR family uses the ``BayesianUniSkip`` of the ``skipthoughts`` package (Cadene's PyTorch port of
https://github.com/ryankiros/skip-thoughts). This is rsitr's own implementation of the same computation with the
same parameter layout, so upstream checkpoints load tensor for tensor:

* ``embedding``: ``nn.Embedding(len(vocab_words) + 1, dim_word, padding_idx=0)``. Row 0 is padding (zeros),
  row i is ``vocab_words[i - 1]`` (rsitr ids: 1..V with ``<unk>`` last, so the table has vocab + 1 rows).
* ``cell.weight_ir / weight_ii / weight_in``: input projections (with bias) of the reset gate r, the update gate
  i (called u in the Theano code) and the candidate n; ``cell.weight_hr / weight_hi / weight_hn``: hidden
  projections without bias. One step::

      r = sigmoid(W_ir x + b_ir + W_hr h)
      i = sigmoid(W_ii x + b_ii + W_hi h)
      n = tanh(W_in x + b_in + r * (W_hn h))
      h' = (1 - i) * n + i * h

* Variational ("Bayesian") dropout in training: six masks (one per projection input: x for ir/ii/in, h for
  hr/hi/hn), each of shape [B, dim] and scaled by 1 / (1 - p), drawn once per sequence and reused at every step.
* The GRU runs over every step of the padded batch (padding embeds to zeros but still updates h, as upstream);
  the sentence vector is the hidden state after the last real token.

Loading the original Theano release (``skipthought_dir`` holding ``dictionary.txt``, ``utable.npy`` and
``uni_skip.npz``; the options file ``uni_skip.npz.pkl`` is not needed):

* ``dictionary.txt``: one word per line; line k names row k of ``utable.npy`` ([n_words, 620] word table of the
  expanded vocabulary). The dictionary contains ``UNK``; vocabulary words missing from it get the ``UNK`` row.
* ``uni_skip.npz`` (Theano ``param_init_gru`` with prefix ``encoder``; Theano multiplies ``x @ W``, so every
  matrix is transposed relative to ``nn.Linear.weight``; d = 2400):

  ====================  ===========  =======================================
  npz key               shape        rsitr parameter
  ====================  ===========  =======================================
  ``encoder_W``         [620, 2d]    columns [:d] -> ``weight_ir.weight``ᵀ (reset r), [d:] -> ``weight_ii.weight``ᵀ (update)
  ``encoder_b``         [2d]         [:d] -> ``weight_ir.bias``, [d:] -> ``weight_ii.bias``
  ``encoder_U``         [d, 2d]      columns [:d] -> ``weight_hr.weight``ᵀ, [d:] -> ``weight_hi.weight``ᵀ
  ``encoder_Wx``        [620, d]     ``weight_in.weight``ᵀ (candidate)
  ``encoder_bx``        [d]          ``weight_in.bias``
  ``encoder_Ux``        [d, d]       ``weight_hn.weight``ᵀ
  ====================  ===========  =======================================

  The Theano step is ``h = u * h_prev + (1 - u) * tanh(x Wx + bx + r * (h_prev Ux))`` with
  ``[r, u] = sigmoid(x W + b + h_prev U)``, i.e. exactly the cell above with i = u. ``Wemb`` (the 20k-word training
  table) is not used; ``utable.npy`` replaces it.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import DataError, MissingFileError
from core.files import RequiredFile
from models.encoders.pretrained import check_coverage

log = logging.getLogger(__name__)

SKIPTHOUGHT_FILES = {
    "dictionary.txt": "skip-thoughts word list, one word per line (Kiros release)",
    "utable.npy": "skip-thoughts uni-skip word table [n_words, 620], rows aligned with dictionary.txt",
    "uni_skip.npz": "skip-thoughts uni-skip GRU weights (encoder_W/b/U/Wx/bx/Ux)",
}
GATES = ("ir", "ii", "in", "hr", "hi", "hn")
GRU_KEYS = ("encoder_W", "encoder_b", "encoder_U", "encoder_Wx", "encoder_bx", "encoder_Ux")  # uni_skip.npz arrays


def missing_skipthought_files(skipthought_dir: str) -> list[str]:
    """Lines '<path> (<what>)' for every skip-thought file missing from ``skipthought_dir``."""
    d = Path(skipthought_dir) if skipthought_dir else None
    return [f"{(d / name) if d else name} ({what})" for name, what in SKIPTHOUGHT_FILES.items()
            if d is None or not (d / name).is_file()]


def skipthought_required_files(skipthought_dir: str, key: str = "model.params.skipthought_dir"
                               ) -> list[RequiredFile]:
    """The three release files a pretrained uni-skip encoder reads."""
    if not skipthought_dir:
        return [RequiredFile(key, "", f"skip-thoughts folder with {', '.join(SKIPTHOUGHT_FILES)}")]
    return [RequiredFile(key, str(Path(skipthought_dir) / name), what) for name, what in SKIPTHOUGHT_FILES.items()]


class UniSkipCell(nn.Module):
    """GRU cell with separate per-gate projections (upstream parameter names ``weight_{ir,ii,in,hr,hi,hn}``)."""

    def __init__(self, dim_in: int, dim_hidden: int) -> None:
        super().__init__()
        self.dim_hidden = dim_hidden
        self.weight_ir = nn.Linear(dim_in, dim_hidden)
        self.weight_ii = nn.Linear(dim_in, dim_hidden)
        self.weight_in = nn.Linear(dim_in, dim_hidden)
        self.weight_hr = nn.Linear(dim_hidden, dim_hidden, bias=False)
        self.weight_hi = nn.Linear(dim_hidden, dim_hidden, bias=False)
        self.weight_hn = nn.Linear(dim_hidden, dim_hidden, bias=False)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One plain step (no dropout). Args: x [B, dim_in], h [B, H]. Returns: h' [B, H]."""
        r = torch.sigmoid(self.weight_ir(x) + self.weight_hr(h))
        i = torch.sigmoid(self.weight_ii(x) + self.weight_hi(h))
        n = torch.tanh(self.weight_in(x) + r * self.weight_hn(h))
        return (1 - i) * n + i * h


class UniSkip(nn.Module):
    """Uni-skip GRU encoder over a word vocabulary.

    Args:
        vocab_words: words ordered by id (id i is ``vocab_words[i - 1]``; id 0 is padding).
        dim_word: word embedding size (620 upstream).
        dim_hidden: GRU hidden size (2400 upstream).
        dropout: variational dropout probability in training (0.25 upstream).
        skipthought_dir: folder with ``dictionary.txt``, ``utable.npy``, ``uni_skip.npz`` (see module docstring).
        pretrained: load those files; False keeps a random init and reads nothing.
    """

    def __init__(self, vocab_words: list[str], dim_word: int = 620, dim_hidden: int = 2400, dropout: float = 0.25,
                 skipthought_dir: str = "", pretrained: bool = False) -> None:
        super().__init__()
        self.vocab_words = list(vocab_words)
        self.dim_word, self.dim_hidden, self.dropout = dim_word, dim_hidden, dropout
        self.embedding = nn.Embedding(len(self.vocab_words) + 1, dim_word, padding_idx=0)
        self.cell = UniSkipCell(dim_word, dim_hidden)
        if pretrained:
            self.load_skipthoughts(skipthought_dir)

    # ------------------------------------------------------------------------------------------- forward
    def _masks(self, batch: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Variational dropout masks, or None outside training.

        Returns:
            (mx [3, B, dim_word] for the ir/ii/in inputs, mh [3, B, dim_hidden] for the hr/hi/hn inputs), each entry
            0 or 1 / (1 - p), drawn once per sequence.
        """
        if not self.training or self.dropout <= 0:
            return None
        keep = 1.0 - self.dropout
        mx = torch.bernoulli(torch.full((3, batch, self.dim_word), keep, device=ref.device, dtype=ref.dtype))
        mh = torch.bernoulli(torch.full((3, batch, self.dim_hidden), keep, device=ref.device, dtype=ref.dtype))
        return mx / keep, mh / keep

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        Args:
            tokens: long [B, L], 0-padded ids.
            lengths: long [B], number of real tokens (>= 1).

        Returns:
            (last [B, H], all_steps [B, L, H]): the hidden state after token ``lengths[b] - 1`` and the hidden
            state after every step (steps past the caption keep running on zero embeddings, as upstream).
        """
        b, seq = tokens.shape
        x = self.embedding(tokens)  # [B, L, E]
        c = self.cell
        masks = self._masks(b, x)
        # Input projections of all steps at once (the x masks are constant over time, so this is exact).
        if masks is None:
            w_x = torch.cat([c.weight_ir.weight, c.weight_ii.weight, c.weight_in.weight], 0)
            b_x = torch.cat([c.weight_ir.bias, c.weight_ii.bias, c.weight_in.bias], 0)
            gx = torch.nn.functional.linear(x, w_x, b_x).view(b, seq, 3, self.dim_hidden).unbind(2)
        else:
            mx = masks[0]
            gx = [lin(x * mx[k].unsqueeze(1)) for k, lin in enumerate((c.weight_ir, c.weight_ii, c.weight_in))]
        # Hidden projections: one batched matmul per step over the three gates.
        w_h = torch.stack([c.weight_hr.weight, c.weight_hi.weight, c.weight_hn.weight], 0).transpose(1, 2)
        h = x.new_zeros(b, self.dim_hidden)
        steps = []
        for t in range(seq):
            hs = h.unsqueeze(0).expand(3, -1, -1) if masks is None else h.unsqueeze(0) * masks[1]
            gh = torch.bmm(hs, w_h)  # [3, B, H]
            r = torch.sigmoid(gx[0][:, t] + gh[0])
            i = torch.sigmoid(gx[1][:, t] + gh[1])
            n = torch.tanh(gx[2][:, t] + r * gh[2])
            h = (1 - i) * n + i * h
            steps.append(h)
        all_steps = torch.stack(steps, 1)
        idx = (lengths.to(tokens.device).long().clamp(min=1, max=seq) - 1).view(b, 1, 1).expand(-1, 1, self.dim_hidden)
        return all_steps.gather(1, idx).squeeze(1), all_steps

    @staticmethod
    def upstream_lengths(tokens: torch.Tensor) -> torch.Tensor:
        """Lengths as the upstream seq2vec derives them (L minus #pad); an all-pad row gives L (index -1 upstream)."""
        n = (tokens != 0).sum(1)
        return torch.where(n == 0, torch.full_like(n, tokens.shape[1]), n)

    # ------------------------------------------------------------------------------------------- loading
    def load_skipthoughts(self, skipthought_dir: str) -> None:
        """Initialise the embedding and GRU from the original Theano release files (see module docstring)."""
        missing = missing_skipthought_files(skipthought_dir)
        if missing:
            raise MissingFileError("missing skip-thought files:\n  " + "\n  ".join(missing) +
                                    "\nset model.params.skipthought_dir or use model.pretrained=false")
        d = Path(skipthought_dir)
        words = [w.strip() for w in (d / "dictionary.txt").read_text(encoding="utf-8").splitlines()]
        table = _load_npy(d / "utable.npy")
        if table.ndim != 2 or table.shape[0] != len(words) or table.shape[1] != self.dim_word:
            raise DataError(f"{d / 'utable.npy'}: shape {table.shape} does not fit {len(words)} dictionary words x "
                             f"dim_word {self.dim_word}")
        try:
            with np.load(d / "uni_skip.npz", allow_pickle=False) as npz:
                gru = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files if k.startswith("encoder_")}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {d / 'uni_skip.npz'} (model.params.skipthought_dir) as an .npz archive "
                            f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})") from None
        check_coverage(d / "uni_skip.npz", sum(k in gru for k in GRU_KEYS), len(GRU_KEYS), "the uni-skip GRU "
                       f"({', '.join(GRU_KEYS)})", "model.params.skipthought_dir",
                       missing=[k for k in GRU_KEYS if k not in gru])
        self.embedding.weight.data.copy_(torch.from_numpy(embedding_rows(self.vocab_words, words, table)))
        own = self.cell.state_dict()
        state = theano_gru_to_cell(gru, self.dim_hidden)
        bad = [k for k, v in state.items() if tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            raise DataError(f"{d / 'uni_skip.npz'}: GRU shapes do not fit dim_word={self.dim_word}, "
                             f"dim_hidden={self.dim_hidden} ({bad[0]}: {tuple(state[bad[0]].shape)})")
        self.cell.load_state_dict(state)
        log.info("skip-thoughts loaded from %s", d)


def _load_npy(path: Path) -> np.ndarray:
    """Read a .npy table; the original Python 2 release may hold a pickled array, which needs allow_pickle."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except ValueError:
        # The user named this file explicitly (model.params.skipthought_dir), so unpickling it is their choice.
        arr = np.load(path, allow_pickle=True, encoding="latin1")
        return np.stack([np.asarray(r, dtype=np.float32) for r in arr]) if arr.dtype == object else arr.astype(np.float32)


def embedding_rows(vocab_words: list[str], dict_words: list[str], table: np.ndarray) -> np.ndarray:
    """Embedding table [len(vocab_words) + 1, E]: row 0 zeros, row i the table row of ``vocab_words[i-1]``.

    Words absent from ``dict_words`` get the ``UNK`` row (an error when the dictionary has no ``UNK``).
    """
    index = {w: k for k, w in enumerate(dict_words)}
    if "UNK" not in index:
        raise DataError("skip-thought dictionary.txt has no 'UNK' entry")
    unk = index["UNK"]
    rows = np.zeros((len(vocab_words) + 1, table.shape[1]), dtype=np.float32)
    ids = [index.get(w, unk) for w in vocab_words]
    rows[1:] = table[ids]
    n_unk = sum(w not in index for w in vocab_words)
    if n_unk:
        log.info("skip-thoughts: %d/%d vocabulary words are not in dictionary.txt and use the UNK row",
                 n_unk, len(vocab_words))
    return rows


def theano_gru_to_cell(p: dict[str, np.ndarray], dim: int) -> dict[str, torch.Tensor]:
    """Map Theano ``encoder_*`` GRU arrays to :class:`UniSkipCell` state-dict entries (module docstring table)."""
    need = GRU_KEYS
    absent = [k for k in need if k not in p]
    if absent:
        raise DataError(f"uni_skip.npz lacks {', '.join(absent)}")
    t = {k: torch.from_numpy(np.ascontiguousarray(p[k], dtype=np.float32)) for k in need}
    w, u = t["encoder_W"].t(), t["encoder_U"].t()  # [2d, in], [2d, d]
    return {
        "weight_ir.weight": w[:dim].contiguous(), "weight_ii.weight": w[dim:].contiguous(),
        "weight_ir.bias": t["encoder_b"][:dim].clone(), "weight_ii.bias": t["encoder_b"][dim:].clone(),
        "weight_in.weight": t["encoder_Wx"].t().contiguous(), "weight_in.bias": t["encoder_bx"].clone(),
        "weight_hr.weight": u[:dim].contiguous(), "weight_hi.weight": u[dim:].contiguous(),
        "weight_hn.weight": t["encoder_Ux"].t().contiguous(),
    }


def upstream_uniskip_keys(upstream_prefix: str, own_prefix: str) -> dict[str, str]:
    """Map own UniSkip keys to upstream ``skipthoughts.BayesianUniSkip`` keys.

    Args:
        upstream_prefix: e.g. ``text_feature.seq2vec.`` (GaLR/AMFMN).
        own_prefix: where the UniSkip sits in the rsitr model, e.g. ``text.encoder.``.

    Returns:
        {own key: upstream key} for the embedding and the nine GRU tensors.
    """
    out = {f"{own_prefix}embedding.weight": f"{upstream_prefix}embedding.weight"}
    for g in GATES:
        out[f"{own_prefix}cell.weight_{g}.weight"] = f"{upstream_prefix}rnn.gru_cell.weight_{g}.weight"
        if g[0] == "i":
            out[f"{own_prefix}cell.weight_{g}.bias"] = f"{upstream_prefix}rnn.gru_cell.weight_{g}.bias"
    return out


class SkipThoughtText(nn.Module):
    """Text tower of the GaLR family: uni-skip sentence vector -> Linear(dim_hidden -> D) -> ReLU.

    Args:
        vocab_words, dim_word, dim_hidden, dropout, skipthought_dir, pretrained: see :class:`UniSkip`.
        embed_dim: output size D.
        upstream_lengths: take the sentence vector where upstream does (L minus #pad, so an all-pad caption
            reads the last step) instead of at ``lengths - 1`` (they differ only for empty captions).
    """

    def __init__(self, vocab_words: list[str], embed_dim: int, dim_word: int = 620, dim_hidden: int = 2400,
                 dropout: float = 0.25, skipthought_dir: str = "", pretrained: bool = False,
                 upstream_lengths: bool = False) -> None:
        super().__init__()
        self.encoder = UniSkip(vocab_words, dim_word, dim_hidden, dropout, skipthought_dir, pretrained)
        self.proj = nn.Linear(dim_hidden, embed_dim)
        self.upstream_lengths = upstream_lengths

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args: tokens [B, L], lengths [B]. Returns: [B, D] (non-negative, after ReLU)."""
        if self.upstream_lengths:
            lengths = UniSkip.upstream_lengths(tokens)
        last, _ = self.encoder(tokens, lengths)
        return torch.relu(self.proj(last))

    def upstream_keys(self, own_prefix: str, upstream_prefix: str = "text_feature.") -> dict[str, str]:
        """{own key: upstream key}; upstream names the encoder ``seq2vec`` and the projection ``to_out``."""
        out = upstream_uniskip_keys(f"{upstream_prefix}seq2vec.", f"{own_prefix}encoder.")
        out[f"{own_prefix}proj.weight"] = f"{upstream_prefix}to_out.weight"
        out[f"{own_prefix}proj.bias"] = f"{upstream_prefix}to_out.bias"
        return out
