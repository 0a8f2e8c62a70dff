"""Shared helpers: atomic writes leave nothing half-written; archives cannot escape their folder."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from medclipsam._utils import (
    UnsafeArchiveError,
    atomic_path,
    atomic_write_text,
    cache_dir,
    get_device,
    safe_extract,
)


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("hello")
        assert not target.exists(), "the target must not appear before the block ends"
    assert target.read_text() == "hello"

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "hello", "a failed write must not touch the existing file"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"], "no temporary left"


def test_atomic_write_text_keeps_the_suffix_for_format_sniffing(tmp_path):
    seen = []
    with atomic_path(tmp_path / "a.png") as tmp:
        seen.append(tmp.suffix)
        tmp.write_bytes(b"x")
    assert seen == [".png"]
    atomic_write_text(tmp_path / "b.txt", "é")
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "é"


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_safe_extract_zip(tmp_path):
    arc = _zip(tmp_path / "ok.zip", {"a/b.txt": b"1", "c.txt": b"2"})
    out = tmp_path / "out"
    files = safe_extract(arc, out)
    assert sorted(p.relative_to(out.resolve()).as_posix() for p in files) == ["a/b.txt", "c.txt"]
    assert (out / "a" / "b.txt").read_bytes() == b"1"


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "/tmp/evil_abs.txt"])
def test_safe_extract_refuses_zip_members_that_escape(tmp_path, evil):
    arc = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok", evil: b"pwned"})
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(arc, out)
    assert not (tmp_path / "evil.txt").exists()
    assert not list(out.rglob("*.txt")), "nothing is written when any member is unsafe"


def test_safe_extract_tar_refuses_escape_and_links(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        info = tarfile.TarInfo("x/y.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    safe_extract(good, tmp_path / "g")
    assert (tmp_path / "g" / "x" / "y.txt").read_bytes() == b"abc"

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(bad, tmp_path / "b")

    bad2 = tmp_path / "bad2.tar"
    with tarfile.open(bad2, "w") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"z"))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bad2, tmp_path / "b2")
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_rejects_non_archives(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="x.zip"):
        safe_extract(p, tmp_path / "o")


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDCLIPSAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "medclipsam"


def test_get_device():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type in {"cpu", "cuda", "mps"}


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "p.txt", "x")
    mode = stat.S_IMODE((tmp_path / "p.txt").stat().st_mode)
    assert mode == 0o666 & ~umask, oct(mode)


def test_warmup_cosine_schedule():
    from medclipsam._utils import warmup_cosine

    assert [warmup_cosine(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(99, 4, 20, floor=0.02) == pytest.approx(0.02)


def test_outside_stacklevel_names_the_first_caller_outside_the_package():
    """A package warning names the user's line however deep in the package it is raised, not a
    file of the package (whose path would show the machine's install folder)."""
    import warnings
    from pathlib import Path

    from medclipsam import _utils

    fake = str(Path(_utils.__file__).resolve().parent / "not_a_module.py")
    code = (
        "def inner():\n"
        "    warnings.warn('deep', UserWarning, stacklevel=outside_stacklevel())\n"
        "def outer():\n"
        "    inner()\n"
    )
    ns = {"warnings": warnings, "outside_stacklevel": _utils.outside_stacklevel}
    exec(compile(code, fake, "exec"), ns)
    with pytest.warns(UserWarning, match="deep") as caught:
        ns["outer"]()
    assert caught[0].filename == __file__


def test_the_warm_up_warning_names_the_callers_line():
    from types import SimpleNamespace

    from medclipsam.config import FinetuneConfig
    from medclipsam.finetune import _Run

    run = SimpleNamespace(
        cfg=FinetuneConfig(batch_size=2, epochs=1, warmup_steps=50),
        train_ds=list(range(8)),
        dist=SimpleNamespace(world=1, rank=0, main=True),
    )
    with pytest.warns(UserWarning, match="never reaches its peak") as caught:
        assert _Run._count_steps(run) == 4
    assert caught[0].filename == __file__
