"""The Ray engine of bulk tagging: Ray Data reads the sources, tags them in a pool of actors and writes the records.

```bash
srn-hf predict MODEL photos/ --engine ray --output tags.parquet                 # a local Ray, the machine's cores
srn-hf predict MODEL --file-list paths.txt --engine ray --ray-address auto --output tags.parquet  # a cluster
srn-hf predict MODEL photos/ --engine ray --output tags.parquet --resume        # after a kill: the rest
```

```python
>>> import ray
>>> from srn_hf.bulk.ray import SRNTagger, tag_with_ray
>>> tag_with_ray("outputs/demo/final", "photos/", "tags.parquet")           # the whole job, as the command does
>>> images = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)   # or your own pipeline
>>> images.map_batches(SRNTagger, fn_constructor_kwargs={"model": "org/srn", "batch_size": 16}, batch_size=64,
...                    batch_format="pyarrow", concurrency=4).write_parquet("s3://bucket/tags.parquet")
```

The sources become a Ray dataset of rows that name each image: the paths of image files (`path`, read by the worker
that tags it), the rows of a `datasets` split (`image_id` and its `image` cell, `datasets.Image(decode=False)`), or
`ray.data.read_binary_files(..., include_paths=True)` rows (`path` and the file's `bytes`, from any file system Ray
reads: local, `s3://`, `gs://`). [`SRNTagger`] loads the model once per actor (an SRN folder or Hub id through the
pipeline's model, or an `srn-hf export` folder through ONNX Runtime, [`srn_hf.bulk.models`]) and turns each batch
into records with the columns and meaning of the one-process engine's parquet output ([`srn_hf.bulk.records`]): one
row per input; an image that cannot be opened is a row whose `error` names the file and the reason. Given a
`batch_size`, it runs a larger batch of rows in forward passes of that size, the next pass's images decoded in a
thread while the model runs.

OUTPUT is a folder of parquet files (one per block of rows, as Ray writes them; pyarrow, pandas, `datasets` and Ray
read it whole), with `OUTPUT.meta.json` beside it as for the one-process engine. Ray retries the work of a worker
that dies; `resume=True` after a killed driver drops the files it left unreadable, skips every input the others
hold and tags the rest.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from ..images import open_image
from .models import load_bulk_model
from .records import BulkError, RecordMaker, Summary, parquet_schema, record_text, run_meta
from .sources import Sources, file_sources, open_dataset_image, preprocessed_image
from .writers import ParquetFolderOutput, check_output, prepare_output, read_records

RAY_EXTRA = "the ray engine needs the ray extra: pip install 'srn_hf[ray]'"
CONNECT_SECONDS = 5.0


def import_ray():
    """The `ray` module with Ray Data, or a `BulkError` saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part the engine uses)
    except ImportError as error:
        raise BulkError(f"{error.name or 'ray'} is not installed: {RAY_EXTRA}") from None
    return ray


def row_openers(columns: dict[str, list]) -> list[tuple[str, Callable]]:
    """`(name, open)` of each row of a batch: the name its record gives it and a function that opens its image.

    Rows are `image_id` + `image` (a `datasets` split), `path` + `bytes` (`ray.data.read_binary_files`), or `path`
    alone (a file the worker reads; a path of bytes, `os.fsencode`, keeps a name that is not UTF-8).
    """
    if "image_id" in columns and "image" in columns:
        names = [str(key) for key in columns["image_id"]]
        return [
            (name, lambda value=value, name=name: open_dataset_image(value, name))
            for name, value in zip(names, columns["image"])
        ]
    names = [os.fsdecode(path) for path in columns["path"]]
    if "bytes" in columns:
        return [
            (name, lambda data=data, name=name: open_dataset_image({"bytes": data, "path": name}, name))
            for name, data in zip(names, columns["bytes"])
        ]
    return [(name, lambda name=name: open_image(name)) for name in names]


class SRNTagger:
    """The records of a batch of rows, for `ray.data.Dataset.map_batches` (`batch_format="pyarrow"`): a callable
    class, so that each actor loads the model once.

    Args:
        model: an SRN model folder, a Hub id, or a folder written by `srn-hf export`.
        threshold, label_thresholds, top_k: the pipeline's (see `MultiLabelImageClassificationPipeline`).
        all_scores: add every label's score (`scores`) to each record.
        fast: the bf16 channels-last path of `srn_hf.fast` (SRN models).
        device: a torch device; default: transformers' choice (a GPU if the actor has one).
        trust_remote_code: run the Python code a model folder or repository brings; never by default.
        batch_size: images per forward pass; a larger batch of rows is tagged in passes of `batch_size`, the images
            of the next pass opened and preprocessed in a thread while the model runs (default: the whole batch).
        threads: torch threads of each forward pass, set in the thread that calls the tagger (an actor that Ray
            calls from several threads at once runs a pass in each); default: torch's (Ray: the actor's CPUs).
    """

    def __init__(
        self,
        model: str,
        threshold: float | None = None,
        label_thresholds: dict | None = None,
        top_k: int | None = None,
        all_scores: bool = False,
        fast: bool = False,
        device: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int | None = None,
        threads: int | None = None,
    ):
        from .. import register

        register()  # a fresh worker process: SRN's Auto classes and pipeline task
        self.model = load_bulk_model(model, device, fast, trust_remote_code)
        thresholds = self.model.thresholds(threshold, label_thresholds)
        self.maker = RecordMaker(self.model.labels, thresholds, top_k, all_scores)
        self.schema = parquet_schema(all_scores, save_attention=False)
        self.batch_size, self.threads = batch_size, threads
        # opens and preprocesses the images of the next forward pass while the model runs (PIL and numpy release the
        # GIL): decoding then takes none of the model's time, as the one-process engine's DataLoader workers do; a
        # thread for each caller at once (its threads start as the calls need them)
        self.decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="srn-decode")

    def preprocessed(self, rows: list[tuple[str, Callable]]) -> list[dict]:
        return [preprocessed_image(opener, self.model.image_processor) for _, opener in rows]

    def __call__(self, batch):
        import pyarrow as pa

        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # OpenMP's count is the calling thread's own
        columns = batch.to_pydict() if isinstance(batch, pa.Table) else {name: list(v) for name, v in batch.items()}
        rows = row_openers(columns)
        size = self.batch_size or max(1, len(rows))
        passes = [rows[start : start + size] for start in range(0, len(rows), size)]
        records, pending = [], self.decoder.submit(self.preprocessed, passes[0]) if passes else None
        for index, pass_rows in enumerate(passes):
            items = pending.result()
            if index + 1 < len(passes):
                pending = self.decoder.submit(self.preprocessed, passes[index + 1])
            scores, _ = self.model.predict(torch.stack([item["pixel_values"] for item in items]))
            records += [
                self.maker.record(name, scores[row], items[row]["error"]) for row, (name, _) in enumerate(pass_rows)
            ]
        return pa.Table.from_pylist(records, schema=self.schema)


def check_address(address: str) -> None:
    """Refuses (`BulkError`) a `HOST:PORT` or `ray://HOST:PORT` cluster address nothing answers at, in seconds
    (Ray itself retries for minutes); `auto` is Ray's to find."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BulkError(f"ray_address={address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise BulkError(f"ray_address={address}: no Ray cluster answers there ({error.strerror or error})") from None


def start_ray(ray, address: str | None) -> bool:
    """Connects to the cluster at `address`, or starts a local Ray in this process with the machine's cores (no
    dashboard, no usage statistics, idle workers kept, workers at the command's niceness); returns whether this call
    started it (and so should shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    options = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if address is None:
        # Ray keeps idle workers only up to its free CPUs; the taggers hold them all, so the worker that wrote a block
        # would exit a second later and the next block start another (seconds of the taggers' CPU on its imports):
        # the raylet started here keeps up to one idle worker a core (Ray's setting; the caller's value wins)
        os.environ.setdefault("RAY_num_workers_soft_limit", str(os.cpu_count()))
        # Ray starts its workers at niceness 15 (a cluster's drivers stay responsive); here the taggers are the job:
        # they run at the command's priority, as the one-process engine does, not below Ray's own processes and every
        # other program of the machine (the caller's value wins)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **options)
        return True
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        raise BulkError(f"ray_address={address}: {' '.join(str(error).split())}") from None
    return True


def actor_resources(cluster_cpus: float, num_actors: int | None, cpus_per_actor: float | None, local: bool):
    """`(actors, CPUs of each)`: `num_actors` taggers (default: the cluster's CPUs / `cpus_per_actor`), each reserving
    `cpus_per_actor` CPUs (default 1; on a local Ray given `num_actors`, the machine's cores shared among them, so
    that one actor tags on every core)."""
    if cpus_per_actor is None:
        cpus_per_actor = cluster_cpus / num_actors if local and num_actors else 1.0
    return num_actors or max(1, int(cluster_cpus // cpus_per_actor)), cpus_per_actor


def passes_at_once(cpus_per_actor: float, gpus_per_actor: float) -> int:
    """Forward passes an actor runs at once: one per whole CPU it holds, each on one torch thread (a pass's threads
    wait for each other at every operator, and for any other process that takes one of their cores; passes side by
    side do not), or one on a GPU."""
    return 1 if gpus_per_actor else max(1, int(cpus_per_actor))


def quiet_ray_data(ray, show_progress: bool) -> None:
    """Ray Data's progress bars only (`show_progress`), not its log lines about each step of the execution."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def ray_dataset(ray, sources: Sources, positions: list[int], block_rows: int):
    """The Ray dataset of images `positions` of `sources`: file paths (as bytes, any name kept) or a split's rows."""
    blocks = max(1, math.ceil(len(positions) / block_rows))
    if sources.dataset is None:
        return ray.data.from_items(
            [{"path": os.fsencode(sources.keys[position])} for position in positions], override_num_blocks=blocks
        )
    rows = sources.dataset.select(positions).select_columns(["image_id", "image"]).flatten_indices()
    return ray.data.from_huggingface(rows, override_num_blocks=blocks)


def as_sources(sources) -> Sources:
    """`Sources`, or image files and folders (a path or a list of them) as [`file_sources`] reads them."""
    if isinstance(sources, Sources):
        return sources
    return file_sources([os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else map(os.fspath, sources))


def prepared_output(destination, options: dict, retry_errors: bool) -> tuple[dict, int]:
    """Loads the model of the taggers' `options` (a bad model or threshold fails here) and prepares `destination` for
    its records: `(records it holds: image -> error or not, error records dropped to be retried)`: the model and
    decision rule the driver checks are the taggers' own, built by [`SRNTagger`]."""
    tagger = SRNTagger(**options)
    meta = run_meta(tagger.model, options["model"], tagger.maker, save_attention=False)
    return prepare_output(destination, meta, None, retry_errors)


def tag_with_ray(
    model: str,
    sources,
    output: str | os.PathLike,
    *,
    resume: bool = False,
    retry_errors: bool = False,
    address: str | None = None,
    num_actors: int | None = None,
    batch_size: int = 8,
    block_rows: int | None = None,
    threshold: float | None = None,
    label_thresholds: dict | None = None,
    top_k: int | None = None,
    all_scores: bool = False,
    fast: bool = False,
    device: str | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    trust_remote_code: bool = False,
    show_progress: bool = True,
) -> Summary:
    """Tags every image of `sources` with Ray Data and writes one record per image to the parquet folder `output`.

    Args:
        model: an SRN model folder, a Hub id, or a folder written by `srn-hf export`.
        sources: [`srn_hf.bulk.sources.Sources`] (`file_sources`, `dataset_sources`), or image files and folders.
        output: the `*.parquet` folder Ray writes, with `OUTPUT.meta.json` beside it.
        resume, retry_errors: continue `output` (same model and settings): skip the images it holds; with
            `retry_errors`, first drop its records that hold an error and predict those images again.
        address: a Ray cluster (`auto`, `HOST:PORT`, `ray://HOST:10001`); None starts a local Ray with the machine's
            cores in this process, shut down at the end.
        num_actors: taggers (each loads the model once); default: the cluster's CPUs / `cpus_per_actor`.
        batch_size: images per forward pass; `block_rows`: rows per block, the unit Ray schedules, retries and
            writes as one file (default: 4 batches).
        threshold, label_thresholds, top_k, all_scores, fast, device, trust_remote_code: as [`SRNTagger`].
        cpus_per_actor, gpus_per_actor: the resources each actor reserves; `cpus_per_actor` default: 1, or the
            machine's cores / `num_actors` on a local Ray given `num_actors`. An actor of N CPUs (no GPU) tags N
            blocks at once, each in a thread of its own on one torch thread ([`passes_at_once`]).

    Returns the counts (`srn_hf.bulk.records.Summary`). Raises `BulkError` before the first image for unusable
    sources or output, a missing ray extra or a cluster that does not answer; `ModelFolderError` for a bad model.
    """
    ray = import_ray()
    if address is not None:
        check_address(address)  # before the model loads: a cluster that is not there fails in seconds
    sources = as_sources(sources)
    if not sources.keys:
        raise BulkError("no images to predict")
    destination = check_output(output, resume, retry_errors, ParquetFolderOutput)
    tagger_options = {
        "model": model,
        "threshold": threshold,
        "label_thresholds": label_thresholds,
        "top_k": top_k,
        "all_scores": all_scores,
        "fast": fast,
        "device": device,
        "trust_remote_code": trust_remote_code,
        "batch_size": batch_size,
    }
    started = False
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="srn-load") as loader:
            # the model loads and the output is checked against it while Ray starts: neither waits for the other
            prepared = loader.submit(prepared_output, destination, tagger_options, retry_errors)
            started = start_ray(ray, address)
            done, retried = prepared.result()  # a bad model or threshold fails here, before any image
        remaining = [position for position, key in enumerate(sources.keys) if record_text(key) not in done]
        summary = Summary(
            skipped=len(sources.keys) - len(remaining), earlier_errors=sum(done.values()), retried=retried
        )
        if not remaining:
            return summary
        cluster_cpus = ray.cluster_resources().get("CPU", 1)
        actors, cpus_per_actor = actor_resources(cluster_cpus, num_actors, cpus_per_actor, local=address is None)
        passes = passes_at_once(cpus_per_actor, gpus_per_actor)
        if passes > 1:
            tagger_options["threads"] = 1
        quiet_ray_data(ray, show_progress)
        before = set(destination.part_files())
        block_rows = block_rows or 4 * batch_size
        dataset = ray_dataset(ray, sources, remaining, block_rows)
        tagged = dataset.map_batches(
            SRNTagger,
            fn_constructor_kwargs=tagger_options,
            batch_size=block_rows,  # a block a call: the tagger decodes each forward pass's images during the last
            batch_format="pyarrow",
            # every actor from the start; a node lost mid-job leaves the others to finish (its blocks are retried)
            compute=ray.data.ActorPoolStrategy(
                min_size=1,
                max_size=actors,
                initial_size=actors,
                max_concurrent_calls_per_actor=passes,  # a block in each of `passes` threads of the actor at once
                enable_true_multi_threading=passes > 1,
            ),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
        )
        # a file per block as soon as it is tagged; writing takes no CPU of the actors' (else it would wait for them)
        tagged.write_parquet(os.fspath(destination.path), ray_remote_args={"num_cpus": 0})
    finally:
        if started:
            ray.shutdown()
    for file in sorted(set(destination.part_files()) - before):
        for _, failed in read_records(file):
            summary.predicted, summary.failed = summary.predicted + 1, summary.failed + failed
    return summary


__all__ = ["SRNTagger", "actor_resources", "passes_at_once", "row_openers", "tag_with_ray"]
