"""Time per image of every real-world entry point, at the paper's k = 300 and at a lesson's k.

    # here (no model hub): BiomedCLIP's architecture and SAM ViT-B with random weights
    python benchmarks/real_path_times.py --random-weights --ks 300 32 --images 1 --threads 1
    # a user's machine or a GPU (real weights, downloaded once)
    python benchmarks/real_path_times.py --device cuda --ks 300 32 --images 4

Entry points: ``MedCLIPSAM.predict`` (one call per image), ``run_folder``, the ``medclipsam segment``
and ``medclipsam pseudo-label`` commands (run through ``medclipsam.cli.main``, the function
``python -m medclipsam`` calls, so that their CPU time can be measured; the model loading they
do is measured apart and subtracted), and the prompt explorer driven headless (the first view of
each image: saliency, prompts, SAM embedding and decoding; then a new prompt, a threshold and a
click on the last image). Every image is new to each entry point, so SAM's embedding is always
included. Random weights cost the same time as real ones (the same architectures and the same
number of operations), so the numbers hold for real weights too; the masks of course do not.

Two times per image: ``cpu s`` (the process's CPU time; with ``--threads 1`` that is the wall time
of an unshared core) and ``wall s`` (what the clock said: on a machine shared with other jobs it
is longer). On a GPU only ``wall s`` means anything.

``--random-weights`` writes BiomedCLIP's Hugging Face hub files (configuration and a small
vocabulary; see ``tests/hf_cache.py``) and a random SAM ViT-B checkpoint into a temporary folder
and points ``HF_HUB_CACHE`` there, offline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _stand_ins(tmp: Path) -> tuple[str, str]:
    """A BiomedCLIP hub cache and a random SAM ViT-B checkpoint under ``tmp``: (clip, sam file)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from hf_cache import write_biomedclip_cache

    hub = write_biomedclip_cache(tmp / "hf")
    os.environ["HF_HUB_CACHE"] = str(hub)  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MEDCLIPSAM_OFFLINE"] = "1"
    import torch

    from medclipsam.models.sam import build_sam

    torch.manual_seed(0)
    sam_file = tmp / "sam_vit_b_random.pth"
    torch.save({k: v.half() for k, v in build_sam("vit_b").state_dict().items()}, sam_file)
    return "biomedclip", str(sam_file)


def _folder(out_dir: Path, n: int, size: int) -> Path:
    from medclipsam.data.phantom import write_phantom_folder

    write_phantom_folder(out_dir, "breast", n, seed=0, size=size)
    return out_dir / "images"


class Clock:
    """Wall and CPU seconds of a ``with`` block (CPU: this process, all its threads)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _link(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def main(argv: list[str] | None = None, rows_out: list | None = None) -> int:
    """The command line; ``rows_out`` (a list) also receives the table's rows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="biomedclip")
    p.add_argument("--sam", default="vit_b")
    p.add_argument("--sam-checkpoint")
    p.add_argument("--random-weights", action="store_true",
                   help="random-weight stand-ins of BiomedCLIP and SAM ViT-B (offline)")
    p.add_argument("--ks", type=int, nargs="+", default=[300, 32], help="gScoreCAM k values")
    p.add_argument("--images", type=int, default=1, help="images per entry point and k")
    p.add_argument("--size", type=int, default=256, help="phantom image size (pixels)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--entries", nargs="+",
                   default=["predict", "run_folder", "segment", "pseudo-label", "explorer"])
    a = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="medclipsam-bench-"))
    clip, sam, checkpoint = a.clip, a.sam, a.sam_checkpoint
    if a.random_weights:
        clip, _ = _stand_ins(tmp)
        sam, checkpoint = "vit_b", str(tmp / "sam_vit_b_random.pth")
    import warnings

    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from _common import hardware_header, print_table

    from medclipsam import MedCLIPSAM
    from medclipsam.cli import main as cli_main
    from medclipsam.data.io import read_image

    warnings.simplefilter("ignore")  # random weights, the crf extra: said once, below
    print(hardware_header())
    with Clock() as load:
        pipe = MedCLIPSAM.from_pretrained(clip, sam, sam_checkpoint=checkpoint, device=a.device,
                                          postprocess="kmeans")
    print(f"models: CLIP {clip} ({'pretrained' if pipe.clip.pretrained else 'RANDOM weights'}), "
          f"SAM {sam}{' from ' + checkpoint if checkpoint else ''}, on {pipe.clip.device}; "
          f"loading both: {load.cpu:.1f} s CPU, {load.wall:.1f} s wall", flush=True)
    with Clock() as reload:  # what each command spends loading, imports already done
        MedCLIPSAM.from_pretrained(clip, sam, sam_checkpoint=checkpoint, device=a.device).close()
    print(f"loading again (what each command does): {reload.cpu:.1f} s CPU", flush=True)
    n_entries = len(a.entries)
    files = sorted(_folder(tmp / "data", a.images * len(a.ks) * n_entries, a.size).iterdir())
    cli_models = ["--clip", clip, "--sam", sam, "--device", a.device, "--postprocess", "kmeans",
                  "--quiet"] + (["--sam-checkpoint", checkpoint] if checkpoint else [])
    rows = []
    queue = iter(files)

    def row(entry: str, k: int, clock: Clock, n: int, note: str, minus_cpu: float = 0.0,
            minus_wall: float = 0.0) -> None:
        rows.append({"entry point": entry, "k": k, "cpu s/image": (clock.cpu - minus_cpu) / n,
                     "wall s/image": (clock.wall - minus_wall) / n, "notes": note})
        print(f"  {entry}, k={k}: {rows[-1]['cpu s/image']:.1f} s CPU per image", flush=True)

    for k in a.ks:
        take = [next(queue) for _ in range(a.images * n_entries)]
        batches = {e: take[i * a.images:(i + 1) * a.images] for i, e in enumerate(a.entries)}
        if "predict" in a.entries:
            stages: dict[str, list[float]] = {}
            with Clock() as c:
                for f in batches["predict"]:
                    res = pipe.predict(f, "breast tumor", k=k)
                    for st in ("saliency", "sam_embed", "sam_decode"):
                        stages.setdefault(st, []).append(res.timings[st])
            note = "wall: " + ", ".join(f"{st} {statistics.mean(v):.1f}" for st, v in stages.items())
            row("MedCLIPSAM.predict", k, c, a.images, note)
        if "run_folder" in a.entries:
            sub = _link(batches["run_folder"], tmp / f"run_folder_{k}")
            base = pipe.config
            pipe.config = replace(base, k=k)
            try:
                with Clock() as c:
                    pipe.run_folder(sub, "breast tumor", tmp / f"out_run_folder_{k}", progress=False)
            finally:
                pipe.config = base
            row("MedCLIPSAM.run_folder", k, c, a.images, "")
        for command in ("segment", "pseudo-label"):
            if command not in a.entries:
                continue
            sub = _link(batches[command], tmp / f"{command}_{k}")
            out_dir = tmp / f"out_{command}_{k}"
            with Clock() as c:
                rc = cli_main([command, "--images", str(sub), "--prompt", "breast tumor", "--out",
                               str(out_dir), "--k", str(k), *cli_models])
            if rc:
                raise RuntimeError(f"medclipsam {command} returned {rc}")
            row(f"medclipsam {command}", k, c, a.images,
                f"its model loading ({reload.cpu:.0f} s CPU) subtracted", reload.cpu, reload.wall)
        if "explorer" in a.entries:
            from medclipsam.widgets import ExplorerImage, PromptExplorer

            imgs = {f.stem: read_image(f, mode="rgb") for f in batches["explorer"]}
            names = list(imgs)
            with Clock() as c:
                ex = PromptExplorer(pipe, {names[0]: ExplorerImage(imgs[names[0]], None, "breast",
                                                                   "breast tumor")}, k=k)
                for name in names[1:]:
                    ex.add_image(name, imgs[name], task="breast", prompt="breast tumor")
            if ex.last_error:
                raise RuntimeError(ex.last_error)
            with Clock() as c_prompt:
                ex.set_prompt("a hypoechoic breast lesion")
            with Clock() as c_thr:
                ex.postprocess.value = "threshold"
                ex.threshold.value = 0.5
            h, w = ex.current.image.shape[:2]
            with Clock() as c_click:
                ex.add_point(w / 2, h / 2, positive=False)
            row("PromptExplorer (first view)", k, c, a.images,
                f"CPU s: new prompt {c_prompt.cpu:.1f}, threshold {c_thr.cpu:.2f}, "
                f"click {c_click.cpu:.2f}")
    print()
    print(f"{a.images} image(s) of {a.size} x {a.size} px per entry point and k; seconds per image")
    print_table(rows, floatfmt="{:.1f}")
    if rows_out is not None:
        rows_out.extend(rows)
    pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
