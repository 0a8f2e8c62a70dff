"""Fetch one file from one or more mirror URLs, verify it, and put it in place atomically.

Used by the model-weight registry and by ``data_scripts/``. Only the standard library's
``urllib.request`` is used, so nothing beyond the package's own dependencies is needed.

What :func:`download` guarantees:

* A file already at ``dest`` that verifies (SHA-256 and/or size, when given) is returned without
  touching the network, so cached files keep working offline.
* Bytes are written to ``dest + ".part"`` beside the target and renamed onto ``dest`` only after
  the size and SHA-256 check out: readers never see a half-written or unverified file.
* A checksum or size mismatch deletes the ``.part`` file (nothing unverified stays in the cache).
  A connection that is cut, times out or fails keeps the ``.part`` file when ``resume=True``, so the
  next attempt (in this call or a later run) asks for the rest with ``Range: bytes=N-``. A server
  that answers ``206`` gets appended to; one that answers ``200`` is downloaded from the start.
* Connection errors, timeouts and HTTP 5xx/408/429 are retried with exponential backoff; other
  HTTP errors (404, 403, ...) and checksum mismatches move straight on to the next mirror.
* Offline mode (``MEDCLIPSAM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), or no mirror answering at all,
  raises :class:`OfflineError` whose message says which URL to fetch by hand, the expected SHA-256
  and size, and the exact path to put the file at.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["DownloadError", "OfflineError", "download", "is_offline", "sha256sum"]

log = logging.getLogger(__name__)

#: Environment variables that switch offline mode on (either one is enough).
OFFLINE_ENV_VARS = ("MEDCLIPSAM_OFFLINE", "HF_HUB_OFFLINE")
_TRUTHY = {"1", "true", "yes", "on"}
_RETRYABLE_STATUS = {408, 429}
_CHUNK = 1 << 16
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEMES = {"http", "https", "ftp", "file"}


class DownloadError(RuntimeError):
    """A download failed; the message says what happened for each URL tried."""


class OfflineError(DownloadError):
    """The file is not present and cannot be fetched (offline mode, or no server answered).

    The message says which URL(s) to fetch by hand, the expected SHA-256 and size, and where to put
    the file.
    """


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of the file at ``path``, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_offline() -> bool:
    """True if ``MEDCLIPSAM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on.

    ``HF_HUB_OFFLINE`` is honoured too so that one switch turns off both our downloads and the
    Hugging Face hub's.
    """
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in OFFLINE_ENV_VARS)


# --------------------------------------------------------------------------------------------
# internal failure kinds of one attempt


class _Failure(Exception):
    """One attempt failed. ``retry``: worth trying the same URL again; ``answered``: an HTTP
    response (any status) came back, i.e. the server is reachable."""

    retry = True
    answered = True


class _HTTPStatus(_Failure):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip())
        self.retry = status >= 500 or status in _RETRYABLE_STATUS


class _NoAnswer(_Failure):
    answered = False

    def __init__(self, reason: object) -> None:
        super().__init__(f"no answer ({reason})")
        # A host name that does not resolve will not resolve a second later either.
        self.retry = not isinstance(reason, socket.gaierror)


class _Cut(_Failure):
    def __init__(self, received: int, total: int | None, reason: object = None) -> None:
        of = f" of {total}" if total is not None else ""
        why = f" ({reason})" if reason else ""
        super().__init__(f"connection cut after {received}{of} bytes{why}")


class _WrongFile(_Failure):
    """The server sent something else than the expected file (size or checksum)."""

    retry = False


# --------------------------------------------------------------------------------------------


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fmt_size(n: int) -> str:
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def _check_file(path: Path, sha256: str | None, size: int | None) -> str | None:
    """None if ``path`` matches ``size``/``sha256`` (those given); else what is wrong."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size is {actual_size} bytes, expected {size}"
    if sha256 is not None:
        actual = sha256sum(path)
        if actual != sha256:
            return f"SHA-256 mismatch: expected {sha256}, got {actual}"
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None where unknown."""
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "medclipsam-downloader", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - schemes checked
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as e:
        raise _NoAnswer(e.reason) from e
    except (OSError, http.client.HTTPException) as e:  # timeout / reset before the status line
        raise _NoAnswer(e) from e


def _fetch(
    url: str, part: Path, size: int | None, timeout: float, progress: bool, resume: bool, desc: str
) -> bool:
    """Bring ``part`` to a complete download of ``url``. Returns True if it reused earlier bytes.

    Raises a :class:`_Failure` subclass on any problem; bytes already written stay in ``part``.
    """
    if not resume:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return True  # complete from an earlier run; the caller verifies it
        part.unlink()
        offset = 0
    for _ in range(2):  # a second pass only after discarding a part the server cannot extend
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 416 and offset:
                    _, total = _content_range(e.headers.get("Content-Range"))
                    if total == offset:
                        return True  # the part already holds the whole file
                    part.unlink()
                    offset = 0
                    continue
                raise _HTTPStatus(e.code, str(e.reason)) from e
        with resp:
            status = resp.status or 200  # file:// and some ftp responses carry no status
            length_header = resp.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    log.info(
                        "%s: server sent a range starting at %s, not %s; starting over",
                        url,
                        start,
                        offset,
                    )
                    part.unlink(missing_ok=True)
                    offset = 0
                    continue
                expected = (
                    total
                    if total is not None
                    else (offset + length if length is not None else size)
                )
                mode = "ab"
            else:
                if offset:
                    log.info("%s: server does not support resuming; starting over", url)
                offset = 0
                expected = length if length is not None else size
                mode = "wb"
            if size is not None and expected is not None and expected != size:
                part.unlink(missing_ok=True)
                raise _WrongFile(f"server reports {expected} bytes, expected {size}")
            return _stream(resp, part, mode, offset, expected, size, progress, desc)
    raise _Failure("server keeps sending unusable ranges")  # pragma: no cover - defensive


def _stream(
    resp,
    part: Path,
    mode: str,
    offset: int,
    expected: int | None,
    size: int | None,
    progress: bool,
    desc: str,
) -> bool:
    received = offset
    with (
        open(part, mode) as f,
        tqdm(
            total=expected,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _Cut(received, expected, e) from e
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if size is not None and received > size:
                f.close()
                part.unlink(missing_ok=True)
                raise _WrongFile(f"server sent more than the expected {size} bytes")
    if expected is not None and received < expected:
        raise _Cut(received, expected)
    return offset > 0


def _try_mirror(
    url: str,
    dest: Path,
    part: Path,
    sha256: str | None,
    size: int | None,
    *,
    retries: int,
    timeout: float,
    progress: bool,
    resume: bool,
    backoff: float,
) -> tuple[bool, str, bool]:
    """Try one URL with retries. Returns (succeeded, what happened, server answered)."""
    answered = False
    fresh_retry_left = True  # one free retry from scratch when a resumed file fails to verify
    attempt = 0
    failure = "not tried"
    while attempt <= retries:
        if attempt and backoff > 0:
            time.sleep(backoff * 2 ** (attempt - 1))
        attempt += 1
        try:
            reused = _fetch(url, part, size, timeout, progress, resume, dest.name)
            answered = True
        except _Failure as e:
            answered = answered or e.answered
            failure = str(e)
            log.info("%s: attempt %d failed: %s", url, attempt, failure)
            if not e.retry:
                return False, failure, answered
            continue
        problem = _check_file(part, sha256, size)
        if problem is None:
            os.replace(part, dest)
            return True, "ok", answered
        part.unlink(missing_ok=True)
        if reused and fresh_retry_left:
            fresh_retry_left = False
            attempt -= 1  # does not count: the stale part was at fault, not the server
            log.warning(
                "%s: resumed download of %s did not verify (%s); downloading it afresh",
                url,
                dest.name,
                problem,
            )
            continue
        return False, problem, answered
    tries = f"{attempt} attempt{'s' if attempt != 1 else ''}"
    return False, f"{failure}; gave up after {tries} ({retries} retries)", answered


def _offline_message(
    urls: list[str],
    dest: Path,
    sha256: str | None,
    size: int | None,
    why: str,
    details: list[str] | None = None,
) -> str:
    lines = [
        f"Cannot download {dest.name}: {why}.",
        *(details or []),
        "Fetch it on a machine with network access from "
        + ("this URL:" if len(urls) == 1 else "any of these URLs:"),
    ]
    lines += [f"    {u}" for u in urls]
    lines.append(f"and put it at:\n    {dest}")
    if sha256 is not None:
        lines.append(f"Expected SHA-256: {sha256}  (check with: sha256sum {dest.name})")
    if size is not None:
        lines.append(f"Expected size: {size} bytes ({_fmt_size(size)})")
    return "\n".join(lines)


def download(
    url: str | list[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    resume: bool = True,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` (or the first working of several mirror URLs) to ``dest`` and verify it.

    ``sha256`` (hex) and ``size`` (bytes) are checked when given. ``retries`` is the number of
    extra attempts per URL after connection errors, timeouts and HTTP 5xx, waiting
    ``backoff * 2**k`` seconds between them; ``timeout`` applies to connecting and to each read.
    ``progress`` shows a tqdm bar. With ``resume`` an interrupted download leaves ``dest.part``
    behind and later attempts continue it; without it every attempt starts from zero and nothing
    is left on failure. Returns ``dest`` as a :class:`~pathlib.Path`.

    Raises :class:`OfflineError` when offline mode is on (see :func:`is_offline`) or no URL got
    any answer, :class:`DownloadError` for everything else (HTTP errors, checksum mismatch, a
    connection cut on every attempt), and :class:`ValueError` for bad arguments.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("download: no URL given")
    for u in urls:
        scheme = urllib.parse.urlsplit(u).scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"download: unsupported URL {u!r} (expected http, https, ftp or file)")
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA_RE.match(sha256):
            raise ValueError(f"download: sha256 must be 64 hex digits, got {sha256!r}")
    if size is not None and size < 0:
        raise ValueError(f"download: size must be >= 0, got {size}")
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("download: need retries >= 0, timeout > 0 and backoff >= 0")
    dest = Path(dest).expanduser().absolute()
    if dest.is_dir():
        raise ValueError(f"download: {dest} is a folder; give the path of the file to write")

    if dest.exists():
        problem = _check_file(dest, sha256, size)
        if problem is None:
            return dest
        warnings.warn(f"{dest}: {problem}; downloading it again", stacklevel=2)

    if is_offline():
        names = " and ".join(
            f"{v}={os.environ[v]}"
            for v in OFFLINE_ENV_VARS
            if os.environ.get(v, "").strip().lower() in _TRUTHY
        )
        why = f"offline mode is on ({names}; unset it to allow downloads)"
        raise OfflineError(_offline_message(urls, dest, sha256, size, why))

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    report: list[str] = []
    any_answer = False
    try:
        for u in urls:
            ok, what, answered = _try_mirror(
                u,
                dest,
                part,
                sha256,
                size,
                retries=retries,
                timeout=timeout,
                progress=progress,
                resume=resume,
                backoff=backoff,
            )
            if ok:
                return dest
            any_answer = any_answer or answered
            report.append(f"  {u}: {what}")
    except BaseException:
        if not resume:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        raise

    if not resume:
        part.unlink(missing_ok=True)
    if not any_answer:
        why = "no server answered (is this machine offline?)"
        raise OfflineError(_offline_message(urls, dest, sha256, size, why, report))
    msg = f"Could not download {dest.name} to {dest}:\n" + "\n".join(report)
    if part.exists():
        msg += (
            f"\nThe partial download ({part.stat().st_size} bytes) is kept at {part}; "
            "run again to resume it."
        )
    raise DownloadError(msg)
