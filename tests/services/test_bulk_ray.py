"""`srn-hf predict --engine ray` (srn_hf.bulk.ray) on a local Ray started in the process: the same rows as the
one-process engine (an SRN folder and an `srn-hf export` ONNX folder), the refusals of a missing ray extra and of a
cluster that is not there, and `import srn_hf` without Ray. The faults on a two-node cluster:
test_bulk_ray_cluster.py."""

import os
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

from srn_hf.cli import main

LABELS = {0: "cat", 1: "dog", 2: "car", 3: "tree"}
ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path_factory.mktemp("srn"))


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((12, 12, 1), dtype=np.uint8))
        Image.fromarray(pixels).save(folder / f"image{index:03d}.{'png' if index % 3 else 'jpg'}")
    (folder / "truncated.jpg").write_bytes((folder / "image000.jpg").read_bytes()[:200])


def rows_by_image(output: Path) -> dict:
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == len({row["image"] for row in rows}), "an image written twice"
    return {row["image"]: row for row in rows}


def assert_same_rows(first: dict, second: dict, atol: float) -> None:
    """The same images, labels in the same order, errors, and scores within `atol`."""
    assert first.keys() == second.keys()
    for image, row in first.items():
        other = second[image]
        assert [item["label"] for item in row["labels"]] == [item["label"] for item in other["labels"]], image
        assert row["error"] == other["error"]
        if row["error"] is None:
            np.testing.assert_allclose(row["scores"], other["scores"], rtol=0, atol=atol, err_msg=image)
            label_scores = ([item["score"] for item in record["labels"]] for record in (row, other))
            np.testing.assert_allclose(*label_scores, rtol=0, atol=atol, err_msg=image)


def engine_rows(model, photos: Path, output: Path, engine: str, capsys) -> dict:
    """The rows of `srn-hf predict MODEL PHOTOS --engine ENGINE --output OUTPUT --all-scores`, by image."""
    command = ["predict", str(model), str(photos), "--engine", engine, "--output", str(output), "--all-scores"]
    status = main([*command, "--batch-size", "4", "--threshold", "0.5"])
    err = capsys.readouterr().err
    assert status == 1 and "1 of 13 images could not be predicted" in err, err  # the truncated JPEG
    rows = rows_by_image(output)
    assert len(rows) == 13 and "truncated.jpg" in rows[str(photos / "truncated.jpg")]["error"]
    return rows


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ray_rows_equal_the_one_process_rows(model_folder, tmp_path, capsys):
    write_images(tmp_path / "photos", 12)
    local = engine_rows(model_folder, tmp_path / "photos", tmp_path / "local.parquet", "local", capsys)
    ray = engine_rows(model_folder, tmp_path / "photos", tmp_path / "ray.parquet", "ray", capsys)
    assert (tmp_path / "ray.parquet").is_dir()  # the folder of parquet files Ray writes
    # float32 scores rounded to 6 decimals: within one unit of the last decimal (batches of other rows)
    assert_same_rows(local, ray, atol=1e-6 + 1e-9)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_an_exported_onnx_folder_tags_alike_in_both_engines(model_folder, tmp_path, capsys):
    write_images(tmp_path / "photos", 12)
    exported = tmp_path / "exported"
    assert main(["export", model_folder, str(exported)]) == 0
    local = engine_rows(exported, tmp_path / "photos", tmp_path / "local.parquet", "local", capsys)
    ray = engine_rows(exported, tmp_path / "photos", tmp_path / "ray.parquet", "ray", capsys)
    assert_same_rows(local, ray, atol=1e-6 + 1e-9)
    srn = engine_rows(model_folder, tmp_path / "photos", tmp_path / "srn.parquet", "local", capsys)
    assert_same_rows(srn, local, atol=1e-4)  # ONNX Runtime's kernels against torch's


def test_the_tagger_opens_the_images_of_its_next_forward_pass_while_the_model_runs(model_folder, tmp_path, monkeypatch):
    """A batch of rows in forward passes of `batch_size`: the images of the next pass are opened and preprocessed while
    the model runs the current one (an actor on every core otherwise leaves them idle while it decodes), with the
    records of one pass over the whole batch."""
    import pyarrow as pa

    from srn_hf.bulk import ray as ray_engine

    write_images(tmp_path / "photos", 6)
    paths = sorted(os.fsencode(path) for path in (tmp_path / "photos").iterdir())  # 6 images and truncated.jpg
    opened, real_open = [], ray_engine.open_image
    monkeypatch.setattr(ray_engine, "open_image", lambda path: opened.append(path) or real_open(path))
    tagger = ray_engine.SRNTagger(model_folder, all_scores=True, batch_size=3)
    passes, real_predict = [], tagger.model.predict

    def predict(pixel_values, attention=False):
        deadline = time.monotonic() + 10
        wanted = min(len(paths), 3 * (len(passes) + 2))  # this pass's images and the next pass's
        while len(opened) < wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        passes.append((len(pixel_values), len(opened) >= wanted))
        return real_predict(pixel_values, attention)

    monkeypatch.setattr(tagger.model, "predict", predict)
    records = tagger(pa.table({"path": paths})).to_pylist()
    assert passes == [(3, True), (3, True), (1, True)]
    assert [record["image"] for record in records] == [os.fsdecode(path) for path in paths]
    assert "truncated.jpg" in records[-1]["error"] and all(record["error"] is None for record in records[:-1])
    tagger.batch_size = None  # one pass over the whole batch: the same rows
    whole = {record["image"]: record for record in tagger(pa.table({"path": paths})).to_pylist()}
    assert passes[3:] == [(7, True)]
    assert_same_rows({record["image"]: record for record in records}, whole, atol=1e-6 + 1e-9)


def predict_subprocess(*argv, prelude: str = "") -> subprocess.CompletedProcess:
    program = f"import sys\n{prelude}\nfrom srn_hf.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", program, "predict", *map(str, argv)],
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def command_lines(stderr: str) -> list[str]:
    """The lines of stderr but transformers' notice of a registration (`python -c` imports srn_hf twice)."""
    return [line for line in stderr.splitlines() if not line.startswith("[transformers]")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_missing_ray_extra_and_a_cluster_not_there_are_one_line_refusals(model_folder, tmp_path):
    write_images(tmp_path / "photos", 2)
    output = tmp_path / "tags.parquet"
    common = (model_folder, tmp_path / "photos", "--engine", "ray", "--output", output)
    missing = predict_subprocess(*common, prelude="sys.modules['ray'] = None  # as if the ray extra were not installed")
    assert missing.returncode == 2, missing.stderr
    assert command_lines(missing.stderr) == [
        "srn-hf predict: error: ray is not installed: the ray engine needs the ray extra: pip install 'srn_hf[ray]'"
    ]
    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        refused = predict_subprocess(*common, "--ray-address", address)
        assert refused.returncode == 2, refused.stderr
        assert command_lines(refused.stderr) == [
            f"srn-hf predict: error: --ray-address {address}: no Ray cluster answers there (Connection refused)"
        ]
    assert not output.exists()


def test_ray_is_not_imported_with_srn_hf_or_its_command():
    program = "import sys, srn_hf, srn_hf.bulk, srn_hf.cli; srn_hf.register(); print('ray' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", program], env=ENVIRONMENT, capture_output=True, text=True)
    assert completed.stdout.strip() == "False", completed.stderr


def test_ray_options_need_the_ray_engine_and_an_output(model_folder, tmp_path, capsys):
    write_images(tmp_path / "photos", 1)
    for extra in (["--ray-address", "auto"], ["--num-actors", "2"]):
        assert main(["predict", model_folder, str(tmp_path / "photos"), *extra]) == 2
        assert capsys.readouterr().err == (
            "srn-hf predict: error: --ray-address, --num-actors, --cpus-per-actor and --gpus-per-actor are options of "
            "--engine ray\n"
        )
    assert main(["predict", model_folder, str(tmp_path / "photos"), "--engine", "ray"]) == 2
    assert "--engine ray writes its records to --output FILE.parquet" in capsys.readouterr().err
    assert main(["predict", model_folder, str(tmp_path / "photos"), "--engine", "ray", "--output", "t.jsonl"]) == 2
    assert "the ray engine writes a folder of parquet files: name it *.parquet" in capsys.readouterr().err


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_datasets_split_through_ray_has_the_rows_of_the_one_process_engine(model_folder, tmp_path, capsys):
    from helpers import write_imagefolder

    data = write_imagefolder(tmp_path / "data", {"test": [["cat"], ["dog"], ["cat", "car"], ["tree"], ["dog"]]})
    outputs = {engine: tmp_path / f"{engine}.parquet" for engine in ("local", "ray")}
    for engine, output in outputs.items():
        command = ["predict", model_folder, "--data", "imagefolder", "--data-option", f"data_dir={data}"]
        command += ["--engine", engine, "--output", str(output), "--all-scores", "--batch-size", "2"]
        assert main(command) == 0, capsys.readouterr().err
    local, ray = rows_by_image(outputs["local"]), rows_by_image(outputs["ray"])
    assert len(local) == 5  # one row per image_id of the split
    assert_same_rows(local, ray, atol=1e-6 + 1e-9)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_driver_loads_the_model_while_ray_starts(model_folder, tmp_path, monkeypatch):
    """The driver loads the model (and checks the output against it) while the local Ray starts, not before it: a
    job's start is the longer of the two, not their sum. A bad model is still refused, and the Ray shut down."""
    import ray

    from srn_hf.bulk import ray as ray_engine
    from srn_hf.model_folder import ModelFolderError

    assert not ray.is_initialized()  # the Ray of this test, not the module's `local_ray` (later in this file)
    write_images(tmp_path / "photos", 4)
    started_first, real_load = [], ray_engine.load_bulk_model

    def load(*args, **kwargs):
        deadline = time.monotonic() + 60
        while not ray.is_initialized() and time.monotonic() < deadline:
            time.sleep(0.05)
        started_first.append(ray.is_initialized())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ray_engine, "load_bulk_model", load)
    options = {"num_actors": 1, "batch_size": 4, "show_progress": False}
    summary = ray_engine.tag_with_ray(model_folder, tmp_path / "photos", tmp_path / "tags.parquet", **options)
    assert started_first == [True]
    assert (summary.predicted, summary.failed) == (5, 1)  # the 4 images and truncated.jpg
    assert not ray.is_initialized()
    with pytest.raises(ModelFolderError, match="no-model"):
        ray_engine.tag_with_ray(str(tmp_path / "no-model"), tmp_path / "photos", tmp_path / "bad.parquet", **options)
    assert not ray.is_initialized() and not (tmp_path / "bad.parquet").exists()


@pytest.fixture(scope="module")
def local_ray():
    """The local Ray the engine starts without --ray-address (Ray's defaults unless the engine sets them), with an
    actor holding every CPU, as the pool of taggers does; once for the module."""
    from srn_hf.bulk.ray import import_ray, start_ray

    with pytest.MonkeyPatch.context() as patch:
        for variable in ("RAY_num_workers_soft_limit", "RAY_worker_niceness"):
            patch.delenv(variable, raising=False)
        ray = import_ray()
        assert start_ray(ray, address=None)
    try:

        class Taggers:
            def niceness(self) -> int:
                return os.getpriority(os.PRIO_PROCESS, 0)

        yield ray, ray.remote(num_cpus=ray.cluster_resources()["CPU"])(Taggers).remote()
    finally:
        ray.shutdown()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_local_ray_keeps_the_worker_that_writes_while_the_taggers_hold_every_core(local_ray):
    """Ray writes each block of records in a task of no CPU beside taggers that hold every core: the worker that wrote
    one block writes the next, seconds later (a new worker would spend seconds of the taggers' CPU on its imports)."""
    ray, taggers = local_ray
    assert ray.get(taggers.niceness.remote()) is not None  # the taggers hold every CPU

    def worker_pid() -> int:
        return os.getpid()

    write = ray.remote(num_cpus=0)(worker_pid)
    first = ray.get(write.remote())
    time.sleep(3)  # a block's tagging; Ray ends the idle workers it does not keep after a second
    assert ray.get(write.remote()) == first


@pytest.mark.multiprocess
def test_the_taggers_of_a_local_ray_run_at_the_priority_of_the_command(local_ray):
    """Ray starts its workers at niceness 15: a tagger would then yield its cores to Ray's own processes and to any
    other program of the machine, where the one-process engine tags at the command's priority."""
    ray, taggers = local_ray
    assert ray.get(taggers.niceness.remote()) == os.getpriority(os.PRIO_PROCESS, 0)


def test_one_actor_on_a_local_ray_gets_every_core_and_a_cluster_one_cpu_each():
    from srn_hf.bulk.ray import actor_resources

    # a local Ray of 2 cores: --num-actors 1 tags on both (its torch threads follow), by default one actor a core
    assert actor_resources(2.0, 1, None, local=True) == (1, 2.0)
    assert actor_resources(2.0, None, None, local=True) == (2, 1.0)
    assert actor_resources(8.0, 3, None, local=True) == (3, 8.0 / 3)
    # a cluster's CPUs span nodes that an actor cannot: one CPU each unless told; what is given is kept
    assert actor_resources(64.0, 2, None, local=False) == (2, 1.0)
    assert actor_resources(2.0, 1, 1.0, local=True) == (1, 1.0)
    assert actor_resources(8.0, None, 4.0, local=False) == (2, 4.0)


def test_an_actor_runs_a_forward_pass_per_cpu_at_once_and_one_on_a_gpu():
    from srn_hf.bulk.ray import passes_at_once

    assert [passes_at_once(cpus, 0.0) for cpus in (2.0, 1.0, 0.5, 8.0 / 3)] == [2, 1, 1, 2]
    assert passes_at_once(4.0, 1.0) == passes_at_once(4.0, 0.5) == 1


def test_a_tagger_called_from_two_threads_at_once_runs_each_pass_on_its_threads(model_folder, tmp_path, monkeypatch):
    """Ray calls an actor of 2 CPUs from two threads at once: each thread's forward pass runs on `threads` torch
    threads (OpenMP's count is per calling thread), both at once, with the rows of one pass over every image."""
    import threading

    import pyarrow as pa
    import torch

    from srn_hf.bulk.ray import SRNTagger

    write_images(tmp_path / "photos", 8)
    paths = sorted(os.fsencode(path) for path in (tmp_path / "photos").iterdir() if path.name != "truncated.jpg")
    tagger = SRNTagger(model_folder, all_scores=True, batch_size=2, threads=1)
    both_running, real_predict, passes = threading.Barrier(2, timeout=30), tagger.model.predict, []

    def predict(pixel_values, attention=False):
        if not passes:
            both_running.wait()  # the first pass of each thread waits for the other's: both at once
        passes.append(torch.get_num_threads())
        return real_predict(pixel_values, attention)

    monkeypatch.setattr(tagger.model, "predict", predict)
    halves, records, main_threads = [paths[:4], paths[4:]], {}, torch.get_num_threads()
    callers = [
        threading.Thread(target=lambda half=half: records.update({id(half): tagger(pa.table({"path": half}))}))
        for half in halves
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    torch.set_num_threads(main_threads)  # as it was for the tests after this one, were torch's count global
    assert passes == [1, 1, 1, 1]  # two passes of 2 images in each thread, each on one torch thread
    tagged = {row["image"]: row for half in halves for row in records[id(half)].to_pylist()}
    tagger.threads, tagger.batch_size = None, None
    monkeypatch.setattr(tagger.model, "predict", real_predict)
    whole = {row["image"]: row for row in tagger(pa.table({"path": paths})).to_pylist()}
    assert_same_rows(tagged, whole, atol=1e-6 + 1e-9)
