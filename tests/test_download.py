"""Downloads against a local HTTP server on 127.0.0.1: never the internet."""

import http.server
import threading
import time

import pytest

from mnist_jax import data
from mnist_jax.data import download
from mnist_jax.data import readers as sources
from mnist_jax.errors import DataError
from tests.test_data import _data_config, write_mlcc_dir


class _Server:
    """Serves `routes[path] = (body, mode)`; modes: ok, truncate, hang."""

    def __init__(self):
        self.routes, self.hits = {}, []
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, mode = routes[self.path]
                if mode == "hang":
                    time.sleep(2)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def good_files(tmp_path):
    folder, _, _ = write_mlcc_dir(tmp_path / "upstream")
    return {
        name: (folder / name).read_bytes()
        for name in (sources.MLCC_TRAIN, sources.MLCC_TEST)
    }


def _serve(server, files, mode_of=lambda name: "ok"):
    for name, body in files.items():
        server.routes["/" + name] = (body, mode_of(name))


def test_download_once_then_use_cache(server, good_files):
    _serve(server, good_files)
    config = _data_config(source="mlcc", url=server.url)
    host = data.load(config)
    assert host.source == "mlcc" and len(server.hits) == 2
    cache = download.mlcc_cache_dir()
    for name, body in good_files.items():
        assert (cache / name).read_bytes() == body
        assert (cache / (name + ".sha256")).read_text().split()[0] == host.files[
            str(cache / name)
        ]
    data.load(config)
    assert len(server.hits) == 2  # served from the cache
    assert data.load(_data_config()).source == "mlcc"  # auto finds the cache


def test_corrupt_cache_is_fetched_again(server, good_files):
    _serve(server, good_files)
    config = _data_config(source="mlcc", url=server.url)
    data.load(config)
    (download.mlcc_cache_dir() / sources.MLCC_TEST).write_text("1,2,3\n")
    data.load(config)
    assert len(server.hits) == 4


@pytest.mark.parametrize("mode", ["truncate", "wrong_content", "missing"])
def test_bad_transfers_never_reach_the_cache(server, good_files, mode):
    files = dict(good_files)
    if mode == "wrong_content":
        files[sources.MLCC_TEST] = b"<html>Service unavailable</html>\n"
    if mode == "missing":
        del files[sources.MLCC_TEST]
    _serve(server, files, lambda name: "truncate" if mode == "truncate" else "ok")
    with pytest.raises(
        DataError, match="could not download .* after 2 tries.*--config.data.path"
    ):
        download.download_mlcc(server.url, retries=2, backoff=0.0)
    cache = download.mlcc_cache_dir()
    assert not (cache / sources.MLCC_TEST).exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    assert download.cached_mlcc_dir() is None


def test_hanging_server_times_out(server, good_files):
    """The server answers only after 2 s: a download that waited would succeed, so the
    error itself shows that each try gave up at its timeout."""
    _serve(server, good_files, lambda name: "hang")
    with pytest.raises(
        DataError, match=r"could not download .* after 2 tries \(.*timed out"
    ):
        download.download_file(
            server.url + sources.MLCC_TRAIN,
            download.mlcc_cache_dir() / sources.MLCC_TRAIN,
            timeout=0.3,
            retries=2,
            backoff=0.0,
        )
    assert len(server.hits) == 2


def test_offline_message(tmp_path):
    with pytest.raises(DataError, match="offline\\? Use local files instead"):
        download.download_mlcc("http://127.0.0.1:9/", retries=1)
