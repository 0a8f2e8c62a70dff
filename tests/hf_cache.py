"""Write a Hugging Face hub cache folder holding BiomedCLIP's configuration files (no weights).

open_clip then resolves the real ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``
identifier offline (``HF_HUB_OFFLINE=1``) and builds the real architecture with random weights.
The configurations follow the published ``open_clip_config.json`` of BiomedCLIP and the BERT-base
``config.json`` of its text encoder (BiomedBERT, formerly PubMedBERT); the vocabulary is a small
stand-in (the real one has 30522 word pieces; ids stay below ``vocab_size`` either way).

Usage in a test (tests/ is on ``sys.path`` under pytest)::

    from hf_cache import use_hf_cache, write_biomedclip_cache

    def test_x(tmp_path, monkeypatch):
        use_hf_cache(monkeypatch, write_biomedclip_cache(tmp_path / "hf"))
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: The text encoder named in BiomedCLIP's config (Microsoft renamed PubMedBERT to BiomedBERT;
#: older copies of the config name ``microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract``).
TEXT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": TEXT_REPO,
            "hf_tokenizer_name": TEXT_REPO,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
}

BERT_BASE_CONFIG = {
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}

SMALL_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "a", "an", "the", "of", "in", "with", "and", "photo", "image", "scan", "showing",
    "breast", "ultrasound", "lesion", "tumor", "tumour", "benign", "malignant", "brain", "mri",
    "chest", "x", "-", "ray", "lung", "lungs", "left", "right", "normal", "mass", "cyst",
    "##s", "##ed", "##ing", ".", ",",
]  # fmt: skip


def _commit(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex name works for a snapshot


def write_hub_repo(root: str | Path, repo_id: str, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` as the ``main`` snapshot of model repo ``repo_id`` in hub cache ``root``.

    Layout: ``models--ORG--NAME/refs/main`` (the commit) and ``snapshots/COMMIT/FILE``. Returns
    the snapshot folder.
    """
    repo_dir = Path(root) / ("models--" + repo_id.replace("/", "--"))
    commit = _commit(repo_id)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, data in files.items():
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")
    return snap


def write_biomedclip_cache(root: str | Path, *, with_text_repo: bool = True) -> Path:
    """Write BiomedCLIP's and its text encoder's config/tokenizer files into hub cache ``root``.

    No weight files: open_clip builds the architecture with random weights. Returns ``root``.
    """
    root = Path(root)
    write_hub_repo(
        root, BIOMEDCLIP_REPO, {"open_clip_config.json": json.dumps(BIOMEDCLIP_CONFIG, indent=2)}
    )
    if with_text_repo:
        write_hub_repo(
            root,
            TEXT_REPO,
            {
                "config.json": json.dumps(BERT_BASE_CONFIG, indent=2),
                "vocab.txt": "\n".join(SMALL_VOCAB) + "\n",
                "tokenizer_config.json": json.dumps(
                    {
                        "do_lower_case": True,
                        "tokenizer_class": "BertTokenizer",
                        "model_max_length": 512,
                    }
                ),
            },
        )
    return root


def use_hf_cache(monkeypatch, root: str | Path) -> None:
    """Point huggingface_hub (and so open_clip and transformers) at hub cache ``root``, offline.

    huggingface_hub reads ``HF_HUB_CACHE`` when it is imported, so besides the environment its
    ``constants`` module is updated too (transformers and open_clip read it at call time).
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
