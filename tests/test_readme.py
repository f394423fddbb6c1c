"""The README's first two commands as a new user runs them: in a fresh copy of the project (no data, no logs), from
a shell without an activated environment, with the network downloads served by a local HTTP server on 127.0.0.1
(the mirror the data code honours, $SKIPVAE_MIRROR). The environment is this one (`$VENV`, set up by `make`), and
the authors' reference posteriors are placed as already converted (their pickles are not available here)."""

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import DATA_DIR, ROOT

pytestmark = pytest.mark.integration


def readme_commands() -> list[str]:
    """The command lines of the README's first code block, without their comments."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def fresh_copy(target: Path) -> Path:
    """The project's files as a clone holds them (tracked and not ignored), nothing else."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


class Mirror(SimpleHTTPRequestHandler):
    """Serves `<dataset>/<file name>` from the data folder; Larochelle's `.amat` files, kept there gzipped, as the
    plain text their official URL gives."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = DATA_DIR / self.path.lstrip("/")
        packed = path.with_name(path.name + ".gz")
        try:
            if not path.is_file() and path.suffix == ".amat" and packed.is_file():
                body = gzip.decompress(packed.read_bytes())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):  # torchvision opens a URL once to follow redirects only
            pass


@pytest.fixture
def mirror():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Mirror, directory=str(DATA_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_the_first_two_commands_set_up_run_and_test(tmp_path, mirror):
    venv = Path(sys.prefix)
    requirements_hash = subprocess.run(
        ["sha256sum", str(ROOT / "requirements.txt")], capture_output=True, text=True, check=True
    ).stdout[:16]
    if not (venv / f".installed-{requirements_hash}").exists():
        pytest.skip("the tests run in an environment `make` did not set up: the commands would install one")
    assert readme_commands()[:2] == ["make run", "make test"]
    clone = fresh_copy(tmp_path / "skip-vae")
    assert not (clone / "data").exists() and not (clone / "logs").exists()
    (clone / "data" / "reference").mkdir(parents=True)
    for path in (DATA_DIR / "reference").glob("mnist-*-latents.npz"):
        shutil.copy(path, clone / "data" / "reference" / path.name)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "SKIPVAE_DATA_DIR", "PYTHONPATH") and not key.startswith("PYTEST_")
    }
    environment["PATH"] = os.pathsep.join(
        entry for entry in os.environ.get("PATH", "").split(os.pathsep) if not entry.startswith(str(venv))
    )
    environment |= {"VENV": str(venv), "SKIPVAE_MIRROR": mirror}
    # the suite that `make test` runs, narrowed to one quick test: the command is the README's, unchanged
    environment["PYTEST_ADDOPTS"] = "-q -p no:cacheprovider -k test_quick_work_and_other_processes_print_nothing"

    def shell(command: str) -> subprocess.CompletedProcess:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=clone,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so that a timeout stops make and the runs it started
        )
        try:
            stdout, stderr = process.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    run = shell("make run")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    logs = clone / "logs" / "mnist_skipvae"
    assert (logs / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert "test/nll_iw" in run.stdout and "version_0/checkpoints/last.ckpt" in run.stdout + run.stderr
    assert any((logs / "version_1").glob("events.out.tfevents.*"))  # the test's metrics, beside the fit
    fetched = sorted(path.name for path in (clone / "data" / "mnist").iterdir())
    assert len(fetched) == 4 and all(name.endswith("-ubyte.gz") for name in fetched)  # what the run reads, no more

    tested = shell("make test")
    assert tested.returncode == 0, (tested.stdout + tested.stderr)[-4000:]
    assert "11 of 11 files in place and checked" in tested.stdout and "1 passed" in tested.stdout
