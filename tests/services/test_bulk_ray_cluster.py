"""`srn-hf predict --engine ray --ray-address HEAD` on a real two-node Ray cluster started once for the module
(`ray start --head` and a second `ray start --address HEAD`, separate processes of this machine, one CPU each):
a worker node killed mid-job, the driver killed mid-job then `--resume`, bad images and names as error rows."""

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import save_with_processor, small_srn
from PIL import Image

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LABELS = {0: "cat", 1: "dog", 2: "car"}
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
ENVIRONMENT = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(ROOT),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # a throwaway cluster of this machine
    "OMP_NUM_THREADS": "1",
}
NODE_OPTIONS = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", "100000000"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list[int]:
    """The processes of session `session` (a `ray start` run with its own session: its raylet, workers, agents)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    found.append(int(entry))
            except OSError:  # ended meanwhile
                pass
    return found


def kill_session(session: int) -> None:
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def start_node(*options: str) -> subprocess.Popen:
    """`ray start ... --block` in a session of its own, so that the node's processes can be found and killed."""
    return subprocess.Popen(
        [RAY, "start", "--block", *NODE_OPTIONS, *options],
        env=ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class Cluster:
    """A head node and worker nodes of this machine, one CPU each, at `address`."""

    def __init__(self, temp_dir: Path):
        self.address = f"127.0.0.1:{free_port()}"
        port = self.address.split(":")[1]
        self.head = start_node("--head", "--port", port, "--include-dashboard=false", "--temp-dir", str(temp_dir))
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> None:
        """A worker node; returns once the cluster has the head and every worker node alive."""
        self.workers.append(start_node("--address", self.address))
        deadline = time.monotonic() + 300
        while alive_nodes(self.address) < 1 + len(self.workers):
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(2)

    def kill_worker(self) -> None:
        """SIGKILL to every process of the last worker node (its raylet, its workers and actors)."""
        node = self.workers.pop()
        kill_session(node.pid)
        node.wait()

    def stop(self) -> None:
        for node in [self.head, *self.workers]:
            kill_session(node.pid)
            node.wait()


def alive_nodes(address: str) -> int:
    program = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(node['Alive'] for node in ray.nodes()))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    return int(completed.stdout.strip() or 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The module's cluster, started once: a head and a worker node; every process of it killed at the end."""
    started = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        started.start_worker()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path_factory.mktemp("srn"))


def write_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((16, 16, 1), dtype=np.uint8))
        Image.fromarray(pixels).save(folder / f"image{index:04d}.png")
    return sorted(str(path) for path in folder.iterdir())


def predict_command(model_folder, *argv) -> list[str]:
    return [sys.executable, "-m", "srn_hf.cli", "predict", str(model_folder), *map(str, argv)]


def written(output: Path) -> collections.Counter:
    """How many rows each image has in the (folder) output."""
    return collections.Counter(pq.read_table(output, columns=["image"]).column("image").to_pylist())


def wait_for_files(output: Path, process: subprocess.Popen, count: int) -> None:
    """Until `count` parquet files are in `output` (the job is under way), while `process` runs."""
    deadline = time.monotonic() + 600
    while len(list(output.glob("*.parquet"))) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no records written"
        time.sleep(0.2)


def ray_job(cluster: Cluster, model_folder, output: Path, *argv) -> subprocess.Popen:
    command = predict_command(model_folder, *argv, "--engine", "ray", "--ray-address", cluster.address)
    return subprocess.Popen(
        [*command, "--output", str(output), "--num-actors", "2", "--batch-size", "2"],
        env=ENVIRONMENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_worker_node_killed_mid_job_leaves_every_image_exactly_once(cluster, model_folder, tmp_path):
    images = write_images(tmp_path / "photos", 400)
    output = tmp_path / "tags.parquet"
    job = ray_job(cluster, model_folder, output, tmp_path / "photos")
    wait_for_files(output, job, 3)
    cluster.kill_worker()
    assert job.poll() is None  # killed mid-job
    _, err = job.communicate(timeout=900)
    cluster.start_worker()  # the next tests have two nodes again
    assert job.returncode == 0, err[-3000:]
    counts = written(output)
    assert set(counts) == set(images) and set(counts.values()) == {1}, err[-3000:]


def test_the_driver_killed_mid_job_then_resume_gives_every_image_exactly_once(cluster, model_folder, tmp_path):
    images = write_images(tmp_path / "photos", 400)
    output = tmp_path / "tags.parquet"
    job = ray_job(cluster, model_folder, output, tmp_path / "photos")
    wait_for_files(output, job, 3)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(5)  # the cluster ends the dead driver's actors and tasks
    before = sum(written(output).values())
    assert 0 < before < len(images)  # killed mid-job
    resumed = ray_job(cluster, model_folder, output, tmp_path / "photos", "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert f"images already in {output}, skipped" in err
    counts = written(output)
    assert set(counts) == set(images) and set(counts.values()) == {1}, err[-3000:]


def test_bad_images_and_names_are_error_rows_and_the_job_goes_on(cluster, model_folder, tmp_path):
    images = write_images(tmp_path / "photos", 6)
    photos = tmp_path / "photos"
    (photos / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    latin1 = os.fsdecode(os.path.join(os.fsencode(photos), b"caf\xe9.png"))  # a file name that is not UTF-8
    Image.new("RGB", (32, 32), (200, 10, 10)).save(latin1)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'missing.png'}\n", encoding="utf-8")
    output = tmp_path / "tags.parquet"
    job = ray_job(cluster, model_folder, output, photos, "--file-list", tmp_path / "list.txt")
    _, err = job.communicate(timeout=900)
    assert job.returncode == 1 and "2 of 9 images could not be predicted" in err, err[-3000:]
    rows = {row["image"]: row for row in pq.read_table(output).to_pylist()}
    assert len(rows) == 9
    assert "corrupt.png" in rows[str(photos / "corrupt.png")]["error"]
    assert rows[str(tmp_path / "missing.png")]["error"] == f"{tmp_path / 'missing.png'}: no such file"
    assert rows[f"{photos}/caf\\xe9.png"]["error"] is None  # the byte written \xe9, as the one-process engine does
    assert all(rows[image]["error"] is None for image in images)
