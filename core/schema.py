"""The config schema: every key with its default and a one-line comment, plus the allowed values.

Like detectron2's ``config/defaults.py``, this module only declares: six frozen dataclass sections (model / data /
loss / optim / train / eval) whose fields are the keys, ``RANGES`` and ``CHOICES`` for the values, the metric names
``eval.select_metric`` may take, and the keys that moved. Loading, merging, type checks and dumping live in
:mod:`core.config`, which re-exports every name here (``from core.config import ModelCfg`` keeps working).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelCfg", "DataCfg", "LossTermCfg", "LossCfg", "OptimCfg", "TrainCfg", "EvalCfg", "Config", "RANGES",
           "CHOICES", "RANK_METRICS", "SELECT_METRICS", "select_metrics", "lower_is_better", "MOVED_KEYS"]

@dataclass(frozen=True)
class ModelCfg:
    name: str = "vse"  # registered method name (models/registry.py)
    embed_dim: int = 512  # joint embedding size
    pretrained: bool = True  # load the pretrained assets named in params; false = random init, no file read
    init_from: str = ""  # "upstream:PATH" (upstream key layout) or "rsitr:PATH" (an rsitr checkpoint)
    upstream_compat: bool = False  # reproduce the upstream code's numeric quirks (METHODS.md E)
    params: dict = field(default_factory=dict)  # method-specific, validated by the method's Params dataclass


@dataclass(frozen=True)
class DataCfg:
    dataset: str = "demo"  # preset (rsicd, rsitmd, ucm, sydney, nwpu, demo) or "precomp" for any folder
    root: str = "data"  # folder that holds <name>_precomp/
    name: str = ""  # precomp folder stem (default: the preset's)
    image_dir: str = ""  # image folder, relative to the precomp folder or absolute (default: the preset's)
    encoding: str = "utf-8"  # caption / filename files; decoded strictly (a bad byte is an error naming file + line)
    tokenizer: str = "vocab"  # vocab (word ids) | bert | clip
    vocab: str = ""  # vocab JSON (word2idx/idx2word/idx); "" = build from the training captions
    tokenizer_path: str = ""  # local directory of a HF tokenizer (bert)
    clip_model: str = "ViT-B-32"  # open_clip name whose tokenizer is used (clip)
    max_tokens: int = 47  # longest token sequence kept
    drop_stopwords: bool = False  # drop stop-words at encode time (upstream keeps them as <unk>)
    word_deletion: float = 0.0  # training-time random word deletion probability (FISVL)
    cap_weight_file: str = ""  # JSON of per-caption loss weights -> batch["cap_weight"] (data/caption_weights.py)
    transform: str = "galr"  # train/eval pipeline name (data/transforms.py)
    image_size: int = 256
    batch_size: int = 100  # global batch size (split over processes)
    eval_batch_size: int = 128
    num_workers: int = 2
    protocol: str = "random_8020"  # random_8020 | stratified | kfold | fixed
    n_folds: int = 1
    val_ratio: float = 0.2
    base_seed: int = 0  # fold k is drawn with base_seed + k
    split_dir: str = ""  # protocol=fixed: folder with train/val_filename_verify.txt
    max_images: int = 0  # >0: keep only the first N images of every split (smoke tests)
    cache: bool = True  # decode each image once per run into a uint8 memory cache (data/images.py); false = per sample
    # leakage check (data/near_dups.py): perceptual hash of every image; train images within the threshold of a test
    # image are removed from training, near-duplicates inside training are reported
    near_dup_hash: str = "phash"  # phash | dhash | ahash | whash (imagehash)
    near_dup_hash_size: int = 16  # imagehash hash_size: a hash of hash_size**2 bits (16: 256 bits)
    near_dup_threshold: int = 64  # near-duplicate: Hamming distance <= this many bits (of hash_size**2)
    near_dup_action: str = "auto"  # remove | report | auto (remove; report on the generated demo set)
    datasets: tuple[str, ...] = ()  # a union of presets / *_precomp folders (data/union.py); data.dataset then unused
    format: str = "precomp"  # precomp (in memory) | webdataset: training pairs streamed from data.shards (data/shards.py)
    shards: str = ""  # webdataset: folder of tar shards + index.json (scripts/make_shards.py); test: data.dataset(s)
    shuffle_buffer: int = 1000  # webdataset: pairs in each worker's shuffle buffer


@dataclass(frozen=True)
class LossTermCfg:
    name: str = "triplet"  # registered loss (losses/__init__.py)
    weight: float = 1.0
    start_epoch: int = 0  # active from this 0-based epoch ...
    end_epoch: int = -1  # ... up to (excluding) this one; -1 = until the end
    params: dict = field(default_factory=dict)  # validated by the loss's Params dataclass


@dataclass(frozen=True)
class LossCfg:
    terms: tuple[LossTermCfg, ...] = (LossTermCfg(),)


@dataclass(frozen=True)
class OptimCfg:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    no_decay_norm_bias: bool = True  # no weight decay on norms, biases and 1-d parameters
    lr_mult: dict = field(default_factory=dict)  # parameter-name prefix -> lr multiplier
    scheduler: str = "step"  # step | warmup_linear | cosine | constant
    step_epochs: int = 20  # step: multiply lr by gamma every step_epochs epochs
    gamma: float = 0.7
    warmup_ratio: float = 0.1  # warmup_linear / cosine: share of steps spent warming up
    grad_clip: float = 0.0  # max grad norm after backward; 0 = off
    fused: bool = False  # PyTorch's fused optimizer kernel (3x faster step on CPU, same update up to rounding)


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 20
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms, single-threaded data order
    amp: str = "bf16"  # bf16 | fp16 | off (always off on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "checkpoints"
    experiment: str = ""  # run name (default: the config file's stem)
    log_every: int = 10  # steps between progress lines in log.txt when the console is not a terminal
    log_every_s: float = 60.0  # ... or seconds between them, whichever comes first (0 = by steps only)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    dist_timeout_s: int = 1800  # torchrun: a collective waiting longer (a stopped node) raises; covers rank 0's eval
    feature_cache: str = "disk"  # off | memory | disk: outputs of locked towers computed once (engine/feature_cache.py)
    feature_cache_dir: str = ""  # where disk stores live; "" = <train.output_dir>/feature_cache


@dataclass(frozen=True)
class EvalCfg:
    select_metric: str = "mR"  # validation metric that picks best.pth (one of select_metrics(); rank metrics
    # medR / meanR pick the lowest value, every other one the highest)
    every: int = 1  # validate every N epochs
    sim_shard: int = 1024  # rows per similarity block
    rerank: str = "none"  # a reranker of engine/rerank.py (none | galr | galr_unweighted); test.py --rerank too
    rerank_params: dict = field(default_factory=dict)  # its settings, e.g. {k: 30, wp1: 0.3, wp2: 1.1} (galr);
    # checked by the reranker's own dataclass (engine/rerank.py RERANK_PARAMS), missing keys take its defaults
    tune_rerank: bool = True  # tune the rerank settings on validation before testing (rerankers that can be tuned)
    scene_recall: tuple[int, ...] = ()  # SRR@r cut-offs to report (SWAN), e.g. [1, 5, 10]
    amp: str = "off"  # off | bf16 | fp16: autocast while encoding val/test on CUDA; off = fp32, so metrics and the
    # best-epoch choice do not depend on train.amp (bf16/fp16 evaluate faster, with slightly different numbers)
    recipe: str = ""  # "" / none | remoteclip | georsclip: evaluate with that code's image and caption rules
    # (data/recipes.py: CLIP 224 px resize + centre crop, caption case); needs data.tokenizer clip and fp32


@dataclass(frozen=True)
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    source: str = field(default="", compare=False)  # file the config came from (for messages; not dumped)


# --------------------------------------------------------------------------------------------------- values
# dotted key -> (lowest allowed, highest allowed, highest is excluded); None = no bound
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "model.embed_dim": (1, None, False),
    "data.max_tokens": (1, None, False), "data.word_deletion": (0, 1, True), "data.image_size": (1, None, False),
    "data.batch_size": (1, None, False), "data.eval_batch_size": (1, None, False), "data.num_workers": (0, None, False),
    "data.n_folds": (1, None, False), "data.val_ratio": (0, 1, True), "data.max_images": (0, None, False),
    "data.near_dup_hash_size": (2, None, False), "data.near_dup_threshold": (0, None, False),
    "data.shuffle_buffer": (1, None, False),
    "optim.lr": (0, None, False), "optim.weight_decay": (0, None, False), "optim.momentum": (0, 1, False),
    "optim.step_epochs": (1, None, False), "optim.gamma": (0, None, False), "optim.warmup_ratio": (0, 1, False),
    "optim.grad_clip": (0, None, False),
    "train.epochs": (0, None, False), "train.log_every": (1, None, False), "train.log_every_s": (0, None, False),
    "train.num_threads": (0, None, False), "train.dist_timeout_s": (1, None, False),
    "eval.every": (1, None, False), "eval.sim_shard": (1, None, False),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "data.tokenizer": ("vocab", "bert", "clip"),
    "data.protocol": ("random_8020", "stratified", "kfold", "fixed"),
    "data.near_dup_hash": ("phash", "dhash", "ahash", "whash"),
    "data.near_dup_action": ("auto", "remove", "report"),
    "data.format": ("precomp", "webdataset"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.scheduler": ("step", "warmup_linear", "cosine", "constant"),
    "train.amp": ("bf16", "fp16", "off"),
    "eval.amp": ("bf16", "fp16", "off"),
    "train.feature_cache": ("off", "memory", "disk"),
    "eval.recipe": ("", "none", "remoteclip", "georsclip"),  # data/recipes.py RECIPES
}

# the metrics evaluation reports (engine/metrics.py, engine/scene_recall.py); tests/engine/test_metrics.py checks
# this list against the keys of a real evaluation
RANK_METRICS = ("i2t_medR", "t2i_medR", "i2t_meanR", "t2i_meanR")  # lower is better
SELECT_METRICS = ("mR", "rsum", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10") + RANK_METRICS


def select_metrics(ev: EvalCfg) -> tuple[str, ...]:
    """Names ``eval.select_metric`` may take: the retrieval metrics and the SRR@r of ``eval.scene_recall``."""
    return SELECT_METRICS + tuple(f"{d}_SRR@{r}" for r in ev.scene_recall for d in ("i2t", "t2i"))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (the rank metrics medR / meanR)."""
    return metric in RANK_METRICS


# old key -> its place now (configs and checkpoints written before the move still load)
MOVED_KEYS = {("eval", "rerank_k"): ("eval", "rerank_params", "k"),
              ("eval", "rerank_wp1"): ("eval", "rerank_params", "wp1"),
              ("eval", "rerank_wp2"): ("eval", "rerank_params", "wp2")}
