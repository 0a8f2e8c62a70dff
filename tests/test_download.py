"""medclipsam.download against a real HTTP server on 127.0.0.1 (see tests/httpserver.py)."""

from __future__ import annotations

import hashlib
import random
import warnings

import pytest
from httpserver import FileServer, free_port

from medclipsam.download import DownloadError, OfflineError, download, is_offline, sha256sum

DATA = random.Random(0).randbytes(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = random.Random(1).randbytes(len(DATA))
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
CUT = 50_000


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """Tests start online whatever the caller's environment says."""
    monkeypatch.delenv("MEDCLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def fetch(url, dest, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0)
    kw.setdefault("timeout", 5)
    return download(url, dest, **kw)


def part_of(dest):
    return dest.with_name(dest.name + ".part")


def test_sha256sum_reads_in_chunks(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    assert sha256sum(p, chunk=4096) == SHA == sha256sum(p)


def test_downloads_verifies_and_leaves_no_part(server, tmp_path):
    route = server.add("/w.pt", DATA)
    dest = tmp_path / "cache" / "sub" / "w.pt"
    out = fetch(server.url("/w.pt"), dest, sha256=SHA.upper(), size=len(DATA))
    assert out == dest and dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.pt"]
    assert route.range_headers() == [None]


def test_progress_bar_shows_on_stderr(server, tmp_path, capsys):
    server.add("/w.pt", DATA)
    fetch(server.url("/w.pt"), tmp_path / "w.pt", sha256=SHA, progress=True)
    assert "w.pt" in capsys.readouterr().err


def test_present_verified_file_is_not_fetched_again(server, tmp_path):
    route = server.add("/w.pt", DATA)
    dest = tmp_path / "w.pt"
    fetch(server.url("/w.pt"), dest, sha256=SHA)
    mtime = dest.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch(server.url("/w.pt"), dest, sha256=SHA)
    assert len(route.requests) == 1 and dest.stat().st_mtime_ns == mtime


def test_present_file_with_wrong_checksum_is_replaced_with_a_warning(server, tmp_path):
    server.add("/w.pt", DATA)
    dest = tmp_path / "w.pt"
    dest.write_bytes(OTHER)
    with pytest.warns(UserWarning, match=f"(?s)expected {SHA}.*downloading it again"):
        fetch(server.url("/w.pt"), dest, sha256=SHA)
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(server, tmp_path):
    route = server.add("/w.pt", OTHER)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/w.pt"), dest, sha256=SHA, retries=3)
    msg = str(err.value)
    assert SHA in msg and OTHER_SHA in msg and server.url("/w.pt") in msg
    assert not isinstance(err.value, OfflineError)
    assert list(tmp_path.iterdir()) == []
    assert len(route.requests) == 1  # a wrong file is not fetched again from the same URL


def test_size_mismatch_is_refused(server, tmp_path):
    server.add("/w.pt", DATA)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match=f"{len(DATA)} bytes, expected {len(DATA) + 1}"):
        fetch(server.url("/w.pt"), dest, size=len(DATA) + 1)
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_resumes_with_range(server, tmp_path):
    route = server.add("/w.pt", DATA, cut_after=CUT, cut_requests=1)
    dest = tmp_path / "w.pt"
    fetch(server.url("/w.pt"), dest, sha256=SHA, size=len(DATA))
    assert dest.read_bytes() == DATA
    assert route.range_headers() == [None, f"bytes={CUT}-"]
    assert route.bytes_sent == len(DATA)  # nothing was sent twice
    assert not part_of(dest).exists()


def test_cut_connection_without_range_support_starts_over(server, tmp_path):
    route = server.add("/w.pt", DATA, ranges=False, cut_after=CUT, cut_requests=1)
    dest = tmp_path / "w.pt"
    fetch(server.url("/w.pt"), dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert route.range_headers() == [None, f"bytes={CUT}-"]  # asked, got a 200, started over
    assert route.bytes_sent == CUT + len(DATA)


def test_cut_every_time_fails_clearly_keeps_part_and_a_later_run_resumes(server, tmp_path):
    route = server.add("/w.pt", DATA, cut_after=CUT)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/w.pt"), dest, sha256=SHA, retries=2)
    msg = str(err.value)
    assert f"cut after {3 * CUT} of {len(DATA)} bytes" in msg
    assert "3 attempts (2 retries)" in msg and str(part_of(dest)) in msg
    assert not dest.exists() and part_of(dest).stat().st_size == 3 * CUT

    route.cut_after = None  # the network is back
    fetch(server.url("/w.pt"), dest, sha256=SHA)
    assert dest.read_bytes() == DATA and not part_of(dest).exists()
    assert route.range_headers()[-1] == f"bytes={3 * CUT}-"


def test_without_resume_a_failed_download_leaves_nothing(server, tmp_path):
    route = server.add("/w.pt", DATA, cut_after=CUT)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match=f"cut after {CUT} of {len(DATA)} bytes"):
        fetch(server.url("/w.pt"), dest, sha256=SHA, retries=1, resume=False)
    assert list(tmp_path.iterdir()) == []
    assert route.range_headers() == [None, None]


def test_stale_part_that_does_not_verify_is_downloaded_afresh(server, tmp_path):
    route = server.add("/w.pt", DATA)
    dest = tmp_path / "w.pt"
    part_of(dest).write_bytes(OTHER[:CUT])  # left over from some other file
    fetch(server.url("/w.pt"), dest, sha256=SHA, retries=0)
    assert dest.read_bytes() == DATA
    assert route.range_headers() == [f"bytes={CUT}-", None]


def test_complete_part_is_finished_without_downloading_again(server, tmp_path):
    route = server.add("/w.pt", DATA)
    dest = tmp_path / "w.pt"
    part_of(dest).write_bytes(DATA)
    fetch(server.url("/w.pt"), dest, sha256=SHA)  # size unknown: the server answers 416
    assert dest.read_bytes() == DATA and route.bytes_sent == 0
    assert route.range_headers() == [f"bytes={len(DATA)}-"]


def test_404_fails_at_once_with_the_status(server, tmp_path):
    route = server.add("/w.pt", DATA, status=404)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match="404") as err:
        fetch(server.url("/w.pt"), dest, sha256=SHA, retries=3)
    assert server.url("/w.pt") in str(err.value)
    assert len(route.requests) == 1 and list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    route = server.add("/w.pt", DATA, fail_first=[500, 503])
    dest = tmp_path / "w.pt"
    fetch(server.url("/w.pt"), dest, sha256=SHA, retries=2)
    assert dest.read_bytes() == DATA and len(route.requests) == 3


def test_server_errors_beyond_the_retries_fail(server, tmp_path):
    route = server.add("/w.pt", DATA, fail_first=[500, 503])
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match=r"HTTP 503.*2 attempts \(1 retries\)"):
        fetch(server.url("/w.pt"), dest, sha256=SHA, retries=1)
    assert len(route.requests) == 2 and list(tmp_path.iterdir()) == []


def test_timeout_is_retried(server, tmp_path):
    # The second attempt must be answered within the timeout: leave a loaded machine room.
    route = server.add("/w.pt", DATA, delay=6.0, delay_requests=1)
    dest = tmp_path / "w.pt"
    fetch(server.url("/w.pt"), dest, sha256=SHA, timeout=3.0, retries=1)
    assert dest.read_bytes() == DATA and len(route.requests) == 2


def test_mirrors_are_tried_in_order(server, tmp_path):
    missing = server.add("/a", DATA, status=404)
    wrong = server.add("/b", OTHER)
    good = server.add("/c", DATA)
    unused = server.add("/d", DATA)
    dest = tmp_path / "w.pt"
    urls = [server.url(p) for p in ("/a", "/b", "/c", "/d")]
    fetch(urls, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert [len(r.requests) for r in (missing, wrong, good, unused)] == [1, 1, 1, 0]


def test_all_mirrors_failing_reports_each(server, tmp_path):
    server.add("/a", DATA, status=403)
    server.add("/b", OTHER)
    urls = [server.url("/a"), server.url("/b")]
    with pytest.raises(DownloadError) as err:
        fetch(urls, tmp_path / "w.pt", sha256=SHA)
    msg = str(err.value)
    assert f"{urls[0]}: HTTP 403" in msg and f"{urls[1]}: SHA-256 mismatch" in msg


def test_file_url_works_as_a_local_mirror(tmp_path):
    src = tmp_path / "mirror" / "w.pt"
    src.parent.mkdir()
    src.write_bytes(DATA)
    out = fetch(src.as_uri(), tmp_path / "cache" / "w.pt", sha256=SHA)
    assert out.read_bytes() == DATA


@pytest.mark.parametrize("var", ["MEDCLIPSAM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_says_what_to_fetch_and_where(server, tmp_path, monkeypatch, var):
    route = server.add("/w.pt", DATA)
    monkeypatch.setenv(var, "1")
    assert is_offline()
    dest = tmp_path / "w.pt"
    with pytest.raises(OfflineError) as err:
        fetch([server.url("/w.pt"), "https://example.org/w.pt"], dest, sha256=SHA, size=len(DATA))
    msg = str(err.value)
    for needle in (
        server.url("/w.pt"),
        "https://example.org/w.pt",
        str(dest),
        SHA,
        str(len(DATA)),
        var,
    ):
        assert needle in msg
    assert route.requests == [] and list(tmp_path.iterdir()) == []


def test_offline_mode_returns_a_present_verified_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    dest = tmp_path / "w.pt"
    dest.write_bytes(DATA)
    assert fetch("https://example.org/w.pt", dest, sha256=SHA) == dest


def test_offline_mode_is_off_for_zero(monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    assert not is_offline()


def test_unreachable_server_raises_offline_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/w.pt"
    dest = tmp_path / "w.pt"
    with pytest.raises(OfflineError) as err:
        fetch(url, dest, sha256=SHA, retries=1)
    msg = str(err.value)
    assert url in msg and str(dest) in msg and SHA in msg
    assert isinstance(err.value, DownloadError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sha256": "abc"}, "64 hex digits"), ({"size": -1}, "size"), ({"retries": -1}, "retries")],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fetch("https://example.org/w.pt", tmp_path / "w.pt", **kwargs)


def test_bad_urls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no URL"):
        fetch([], tmp_path / "w.pt")
    with pytest.raises(ValueError, match="unsupported URL 'w.pt'"):
        fetch("w.pt", tmp_path / "w.pt")
