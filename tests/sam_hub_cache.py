"""Write SAM 2 / SAM 3 models (real architectures, small configs, random weights) into a Hugging
Face hub cache the way the hub does: files stored as ``blobs/<hash>`` (SHA-256 for weights, git
blob SHA-1 for small files) with links from ``snapshots/<commit>/``, so the loading code meets the
same layout, the same repository configs (``sam2_video``, ``sam3_video``) and the same published
hashes as with Meta's repositories.

Usage (tests/ is on ``sys.path`` under pytest)::

    from hf_cache import use_hf_cache
    from sam_hub_cache import save_sam2_video, write_hub_model

    write_hub_model(tmp_path / "hf", "facebook/sam2.1-hiera-tiny", save_sam2_video(tmp_path / "m"))
    use_hf_cache(monkeypatch, tmp_path / "hf")
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def _blob_name(data: bytes, large: bool) -> str:
    if large:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_model(root: str | Path, repo_id: str, folder: str | Path) -> Path:
    """Put every file of ``folder`` into hub cache ``root`` as repo ``repo_id``'s ``main``
    snapshot (blobs + relative links, as huggingface_hub writes them). Returns the snapshot."""
    repo_dir = Path(root) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for src in sorted(Path(folder).iterdir()):
        if not src.is_file():
            continue
        data = src.read_bytes()
        blob = repo_dir / "blobs" / _blob_name(data, src.suffix == ".safetensors")
        blob.write_bytes(data)
        link = snap / src.name
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, snap), link)
    return snap


def blob_of(snapshot: Path, name: str) -> Path:
    """The blob a snapshot file links to."""
    return (snapshot / name).resolve()


def save_sam2_video(folder: str | Path, arch: str = "test", seed: int = 0) -> Path:
    """A SAM 2 of ``arch`` saved as Meta's repositories are: a ``sam2_video`` config and the
    video model's weights (the memory modules included), plus a preprocessor config."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from medclipsam.models.sam2 import sam2_config

    c = sam2_config(arch)
    vc = Sam2VideoConfig(
        vision_config=c.vision_config.to_dict(),
        prompt_encoder_config=c.prompt_encoder_config.to_dict(),
        mask_decoder_config=c.mask_decoder_config.to_dict(),
        image_size=c.prompt_encoder_config.image_size,
    )
    torch.manual_seed(seed)
    Sam2VideoModel(vc).save_pretrained(folder)
    size = c.prompt_encoder_config.image_size
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam2ImageProcessorFast", "size": {"height": size, "width": size},
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }))
    return Path(folder)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: str | Path) -> Path:
    """A CLIP tokenizer with a small vocabulary (bytes and a few merges; ids stay below SAM 3's
    49408): vocab.json, merges.txt, tokenizer_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    merges = [("l", "e"), ("le", "s"), ("i", "o"), ("io", "n</w>"), ("t", "u"), ("m", "o")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 32, "pad_token": "<|endoftext|>",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    return folder


def save_sam3_video(folder: str | Path, arch: str = "test", seed: int = 0) -> Path:
    """A SAM 3 of ``arch`` saved in the layout of the ``facebook/sam3`` repository: a
    ``sam3_video`` config whose ``detector_config`` is the image model, weights under
    ``detector_model.`` (plus a tracker tensor the image model must ignore), a CLIP tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3Model

    from medclipsam.models.sam3 import sam3_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3Model(sam3_config(arch))
    sd = {f"detector_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    sd["tracker_model.no_memory_embedding"] = torch.zeros(1, 1, 8)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    detector = model.config.to_dict()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Sam3VideoModel"], "model_type": "sam3_video", "detector_config": detector,
    }))
    write_clip_tokenizer(folder)
    return folder
