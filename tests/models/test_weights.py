"""cpsnake.models.weights: registry, sha256-checked cache, downloads against a real HTTP server on 127.0.0.1;
the CLI (cpsnake.steps.weights)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cpsnake.errors import CpsnakeError
from cpsnake.models import weights
from cpsnake.models.weights import Entry, resolve
from cpsnake.steps import weights as weights_step

BODY = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(BODY).hexdigest()


class FileServer:
    """http.server in a thread on an ephemeral port, serving ``files`` under /files/NAME.

    ``range_ok``: honour ``Range: bytes=N-`` with 206; ``truncate``: send the full Content-Length but
    only this many bytes; ``delay``: seconds of sleep between 1 kB chunks. ``requests`` logs
    (path, Range header, status) of every request.
    """

    def __init__(self, files: dict[str, bytes], *, range_ok=True, truncate=None, delay=0.0):
        self.files, self.range_ok, self.truncate, self.delay = files, range_ok, truncate, delay
        self.requests: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                body = server.files.get(name)
                if body is None or not self.path.startswith("/files/"):
                    server.requests.append((self.path, rng, 404))
                    self.send_error(404)
                    return
                start, status = 0, 200
                if rng and server.range_ok:
                    start, status = int(rng.split("=")[1].split("-")[0]), 206
                    if start >= len(body):
                        server.requests.append((self.path, rng, 416))
                        self.send_error(416)
                        return
                server.requests.append((self.path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                data = body[start:]
                if server.truncate is not None:
                    data = data[: server.truncate]
                for i in range(0, len(data), 1024):
                    self.wfile.write(data[i : i + 1024])
                    if server.delay:
                        time.sleep(server.delay)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def registry(base: str, body: bytes = BODY, sha: str = SHA) -> dict[str, Entry]:
    return {"demo": Entry("demo", len(body), sha, base=base)}


def gets(server: FileServer) -> list:
    return [r for r in server.requests if r[0].endswith("/demo")]


def test_fetch_verifies_and_second_call_makes_no_request(tmp_path):
    with FileServer({"demo": BODY}) as srv:
        reg = registry(srv.base)
        path = resolve("demo", cache_dir=tmp_path, registry=reg)
        assert path == tmp_path / "demo" and path.read_bytes() == BODY
        assert len(srv.requests) == 1
        again = resolve("demo", cache_dir=tmp_path, registry=reg)
        assert again == path and len(srv.requests) == 1  # verified copy: no network call
    assert (tmp_path / "demo.sha256").read_text().split()[0] == SHA
    assert not (tmp_path / "demo.part").exists()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CPSNAKE_CACHE", str(tmp_path / "envcache"))
    with FileServer({"demo": BODY}) as srv:
        path = resolve("demo", registry=registry(srv.base))
    assert path == tmp_path / "envcache" / "demo"


def test_base_url_override_points_at_mirror(tmp_path, monkeypatch):
    with FileServer({"demo": BODY}) as mirror:
        reg = registry("http://127.0.0.1:9/nowhere")  # default source unreachable
        monkeypatch.setenv("CPSNAKE_WEIGHTS_URL", mirror.base)
        assert resolve("demo", cache_dir=tmp_path, registry=reg).read_bytes() == BODY
        assert len(gets(mirror)) == 1


def test_changed_cached_file_is_rehashed_and_replaced(tmp_path):
    with FileServer({"demo": BODY}) as srv:
        reg = registry(srv.base)
        path = resolve("demo", cache_dir=tmp_path, registry=reg)
        path.write_bytes(b"x" * len(BODY))  # same size, new content and mtime: stamp no longer matches
        assert resolve("demo", cache_dir=tmp_path, registry=reg).read_bytes() == BODY
        assert len(srv.requests) == 2


_CHILD = """
import sys
from cpsnake.models.weights import Entry, resolve
base, sha, size, cache = sys.argv[1:5]
print(resolve("demo", cache_dir=cache, registry={"demo": Entry("demo", int(size), sha, base=base)}))
"""


def test_two_processes_fetch_the_file_once(tmp_path):
    with FileServer({"demo": BODY}, delay=0.1) as srv:  # about 1 s per download: the two overlap
        args = [sys.executable, "-c", _CHILD, srv.base, SHA, str(len(BODY)), str(tmp_path)]
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {o[0].strip() for o in outs} == {str(tmp_path / "demo")}
    assert (tmp_path / "demo").read_bytes() == BODY
    assert len(gets(srv)) == 1  # the second process waited on the lock and found the verified file


def test_resume_partial_download_with_range(tmp_path):
    (tmp_path / "demo.part").write_bytes(BODY[:3000])
    with FileServer({"demo": BODY}) as srv:
        path = resolve("demo", cache_dir=tmp_path, registry=registry(srv.base))
    assert path.read_bytes() == BODY
    assert gets(srv) == [("/files/demo", "bytes=3000-", 206)]


def test_complete_part_is_verified_and_renamed(tmp_path):
    (tmp_path / "demo.part").write_bytes(BODY)  # e.g. killed between download and rename
    with FileServer({"demo": BODY}) as srv:
        path = resolve("demo", cache_dir=tmp_path, registry=registry(srv.base))
    assert path.read_bytes() == BODY and not (tmp_path / "demo.part").exists()
    assert gets(srv) == [("/files/demo", "bytes=10240-", 416)]


def test_server_without_range_support_restarts(tmp_path):
    (tmp_path / "demo.part").write_bytes(b"garbage!" * 100)
    with FileServer({"demo": BODY}, range_ok=False) as srv:
        path = resolve("demo", cache_dir=tmp_path, registry=registry(srv.base))
    assert path.read_bytes() == BODY
    assert gets(srv) == [("/files/demo", "bytes=800-", 200)]


def test_truncated_body_is_an_error_then_resumes(tmp_path):
    with FileServer({"demo": BODY}, truncate=4096) as srv:
        with pytest.raises(CpsnakeError, match=r"(truncated|interrupted).*4096 of 10240"):
            resolve("demo", cache_dir=tmp_path, registry=registry(srv.base))
    assert not (tmp_path / "demo").exists()
    assert (tmp_path / "demo.part").read_bytes() == BODY[:4096]
    with FileServer({"demo": BODY}) as srv:
        assert resolve("demo", cache_dir=tmp_path, registry=registry(srv.base)).read_bytes() == BODY
    assert gets(srv) == [("/files/demo", "bytes=4096-", 206)]


def test_wrong_hash_is_an_error_and_leaves_no_file(tmp_path):
    with FileServer({"demo": BODY}) as srv:
        reg = registry(srv.base, sha="0" * 64)
        with pytest.raises(CpsnakeError, match=f"sha256 {SHA}, expected 0000"):
            resolve("demo", cache_dir=tmp_path, registry=reg)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "demo.part").exists()


def test_wrong_size_is_an_error(tmp_path):
    with FileServer({"demo": BODY}) as srv:
        reg = {"demo": Entry("demo", len(BODY) + 5, SHA, base=srv.base)}
        with pytest.raises(CpsnakeError, match="10240 bytes, expected 10245"):
            resolve("demo", cache_dir=tmp_path, registry=reg)
    assert not (tmp_path / "demo").exists()


def test_http_404_is_an_error(tmp_path):
    with FileServer({}) as srv:
        with pytest.raises(CpsnakeError, match="HTTP 404"):
            resolve("demo", cache_dir=tmp_path, registry=registry(srv.base))
    assert not (tmp_path / "demo").exists() and not (tmp_path / "demo.part").exists()


def test_refused_connection_is_an_error(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(CpsnakeError, match="cannot connect"):
        resolve("demo", cache_dir=tmp_path, registry=registry(f"http://127.0.0.1:{port}/files"))
    assert not (tmp_path / "demo").exists()


def test_download_false_does_not_download(tmp_path):
    with FileServer({"demo": BODY}) as srv:
        with pytest.raises(CpsnakeError, match="not in the cache"):
            resolve("demo", cache_dir=tmp_path, registry=registry(srv.base), download=False)
        assert srv.requests == []


def test_local_path_is_returned_as_is(tmp_path):
    f = tmp_path / "my_model.pt"
    f.write_bytes(b"anything")
    assert resolve(str(f), registry={}) == f
    with pytest.raises(CpsnakeError, match="no such weights file"):
        resolve(str(tmp_path / "other.pt"), registry={})
    with pytest.raises(CpsnakeError, match="is a folder"):
        resolve(str(tmp_path), registry={})


def test_unknown_name_lists_known_names():
    with pytest.raises(CpsnakeError, match="unknown name.*cpsam_v2, cpsam, nuclei_small, nuclei_unet"):
        resolve("cpsam_v3")


def test_bundled_entry(tmp_path):
    f = tmp_path / "small.pt"
    reg = {"small": Entry("small", 8, hashlib.sha256(b"weights!").hexdigest(), bundled=f)}
    with pytest.raises(CpsnakeError, match="bundled model 'small' is missing"):
        resolve("small", registry=reg)
    f.write_bytes(b"weights!")
    assert resolve("small", registry=reg) == f
    f.write_bytes(b"weights?")
    with pytest.raises(CpsnakeError, match="has sha256 .*expected"):
        resolve("small", registry=reg)
    unfilled = {"small": Entry("small", None, None, bundled=f)}
    with pytest.raises(CpsnakeError, match="no size/sha256 yet; found size 8 sha256 "):
        resolve("small", registry=unfilled)


def test_registry_facts():
    assert weights.REGISTRY["cpsam"].url() == "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam"
    assert weights.REGISTRY["cpsam_v2"].url(revision="abc") == (
        "https://huggingface.co/mouseland/cellpose-sam/resolve/abc/cpsam_v2"
    )
    assert weights.REGISTRY["nuclei_small"].bundled == Path(weights.__file__).resolve().parents[3] / (
        "resources/models/nuclei_small.pt"
    )


def test_cli_fetch_prints_path_and_list_shows_state(tmp_path, monkeypatch, capsys):
    with FileServer({"demo": BODY}) as srv:
        monkeypatch.setattr(weights, "REGISTRY", registry(srv.base))
        assert weights_step.main(["list", "--cache-dir", str(tmp_path)]) == 0
        assert "not cached" in capsys.readouterr().out
        assert weights_step.main(["fetch", "demo", "--cache-dir", str(tmp_path), "--quiet"]) == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / "demo")
        assert weights_step.main(["list", "--cache-dir", str(tmp_path)]) == 0
        assert "cached, verified" in capsys.readouterr().out
        assert weights_step.main(["fetch", "nope", "--cache-dir", str(tmp_path)]) == 1
        assert "unknown name" in capsys.readouterr().err
