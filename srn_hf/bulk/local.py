"""The one-process engine of bulk tagging (also N processes under `accelerate launch`, each taking every N-th image,
the first merging their parts): images opened and preprocessed in `DataLoader` workers, the model run on batches in
the process, records written as it goes (see `srn_hf.bulk`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..storage import remove_file, storage_error
from .models import as_bulk_model
from .records import BulkError, RecordMaker, Summary, parquet_schema, record_text, run_meta
from .sources import ImageRows, Sources, collate_rows
from .writers import Output, StdoutWriter, check_output, prepare_output


def attention_png_path(folder: str, image_file: str, used_names: set) -> str:
    """FOLDER/<image stem>_attention.png, numbered when two images share a stem."""
    stem = os.path.splitext(os.path.basename(image_file))[0]
    name, number = f"{stem}_attention.png", 1
    while name in used_names:
        name, number = f"{stem}_{number}_attention.png", number + 1
    used_names.add(name)
    return os.path.join(folder, name)


def save_attention(
    record: dict, image_file: str, attention_maps: torch.Tensor, size: tuple, label2id: dict, folder: str, used: set
) -> None:
    """Draws the image's attention maps A of its predicted labels (`srn_hf.visualize`) and names the PNG in `record`."""
    from ..pipeline_srn import upsample_attention_map
    from ..visualize import save_attention_overlay

    predictions = [
        {**item, "attention_map": upsample_attention_map(attention_maps[label2id[item["label"]]], *size)}
        for item in record["labels"]
    ]
    path = attention_png_path(folder, image_file, used)
    try:
        record["attention"] = record_text(os.fspath(save_attention_overlay(image_file, predictions, path)))
    except OSError as error:  # a full disk: the batch's records are not written, --resume draws them again
        remove_file(Path(path))
        raise storage_error(path, error) from error


def predicted_batches(bulk_model, loader, attention: bool) -> Iterator[tuple[dict, np.ndarray, torch.Tensor]]:
    """`(batch, sigmoid scores B x C, attention maps A or None)` for each batch of the loader."""
    for batch in loader:
        yield batch, *bulk_model.predict(batch["pixel_values"], attention)


def loader_errors_named(batches: Iterator) -> Iterator:
    """`batches`, a `DataLoader` worker's failure (an error in it, or its death) raised as a `BulkError` of one line
    naming the cause: the run stops, and the records written so far stay valid for `resume=True`."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as error:
            if "DataLoader worker" not in str(error):
                raise
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise BulkError(
                f"a DataLoader worker failed ({lines[-1]}); the records written so far stay, resume=True continues"
            ) from error
        yield batch


def predict_share(
    tagger, sources: Sources, positions: list[int], maker: RecordMaker, writer, settings: dict
) -> Summary:
    """Predicts images `positions` of `sources` in batches, writing each batch's records; returns the counts."""
    from tqdm.auto import tqdm

    rows = ImageRows(sources, positions, tagger.image_processor)
    batches = -(-len(rows) // settings["batch_size"])
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=settings["batch_size"],
        num_workers=min(settings["num_workers"], batches),
        collate_fn=collate_rows,
    )
    label2id = {label: index for index, label in enumerate(maker.labels)}
    summary, used_names = Summary(), set()
    progress = tqdm(
        total=len(rows), desc="predict", unit="image", disable=not settings["show_progress"] or len(rows) < 2
    )
    attention_folder = settings["save_attention"]
    with progress:  # closed on an error too, so that the error's line is not glued to the bar
        predicted = loader_errors_named(predicted_batches(tagger, loader, attention_folder is not None))
        for batch, scores, attention_maps in predicted:
            records = []
            for row, (position, size, error) in enumerate(zip(batch["position"], batch["size"], batch["error"])):
                record = maker.record(sources.keys[position], scores[row], error)
                if error is not None:
                    summary.failed += 1
                    if settings["report_errors"]:
                        tqdm.write(f"srn-hf predict: error: {record['error']}", file=sys.stderr)
                elif attention_folder is not None:
                    save_attention(
                        record,
                        sources.keys[position],
                        attention_maps[row],
                        size,
                        label2id,
                        attention_folder,
                        used_names,
                    )
                records.append(record)
            writer.write(records)
            summary.predicted += len(records)
            progress.update(len(records))
    return summary


def total_over_processes(summary: Summary, state) -> Summary:
    """The counts summed over the processes of an `accelerate launch` run."""
    if state.num_processes == 1:
        return summary
    from accelerate.utils import reduce

    counts = torch.tensor(
        [summary.predicted, summary.failed, summary.skipped, summary.earlier_errors, summary.retried],
        device=state.device,
    )
    return Summary(*(int(value) for value in reduce(counts, reduction="sum")))


def run_state(device: str | torch.device | None = None):
    """accelerate's `PartialState` of this run: its processes under `accelerate launch`, else one process.

    On a CPU (`device` cpu, or none and no GPU) the processes of `accelerate launch --multi_gpu --num_processes N`
    join over gloo; accelerate's state is created once per process, so the first call decides.
    """
    from accelerate import PartialState

    cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def check_run(
    sources: Sources, output, resume: bool, save_attention, num_processes: int, retry_errors: bool = False
) -> Output | None:
    """Refuses (`BulkError`) a run that could not give its records: no images, nowhere to write them."""
    if not sources.keys:
        raise BulkError("no images to predict")
    if num_processes > 1 and output is None:
        raise BulkError(f"{num_processes} processes need output=...: each writes its share there")
    if save_attention is not None and sources.dataset is not None:
        raise BulkError("save_attention=... draws image files: it does not apply to the rows of data=...")
    if output is None and (resume or retry_errors):
        raise BulkError("resume=True and retry_errors=True continue an output=... file: pass output=...")
    return check_output(output, resume, retry_errors) if output is not None else None


def tag_images(
    tagger,
    sources: Sources,
    model: str,
    output: str | None = None,
    resume: bool = False,
    as_json: bool = False,
    batch_size: int = 8,
    num_workers: int = 2,
    fast: bool = False,
    threshold: float | None = None,
    label_thresholds: dict | None = None,
    top_k: int | None = None,
    all_scores: bool = False,
    save_attention: str | None = None,
    part_rows: int = 1024,
    retry_errors: bool = False,
) -> Summary:
    """Predicts every image of `sources` with the pipeline `tagger`'s model and writes one record per image.

    Args:
        tagger: a `multi-label-image-classification` pipeline (its model, image processor, device and thresholds),
            or a bulk model of [`srn_hf.bulk.models.load_bulk_model`] (an SRN model or an exported folder).
        sources: from [`file_sources`] or [`dataset_sources`].
        model: the model's name or folder, kept in `OUTPUT.meta.json`.
        output: a `.jsonl` or `.parquet` file, written as the run goes; None prints to stdout (text, or a JSON
            list with `as_json`), in a single process only.
        resume: continue OUTPUT: skip the images it holds (it must come from the same model and settings).
        retry_errors: with `resume`, predict again the images whose records in OUTPUT hold an error (those records
            are dropped first); without it they are kept and counted in `Summary.earlier_errors`.
        batch_size, num_workers, fast: images per forward pass, `DataLoader` workers that open and preprocess
            the images, and the fast path of `srn_hf.fast`.
        threshold, label_thresholds, top_k: the pipeline's (see `MultiLabelImageClassificationPipeline`).
        all_scores: add every label's score to each record.
        save_attention: a folder for a PNG of each image's attention maps (image files only).
        part_rows: records per parquet part.

    Under `accelerate launch`, each process takes every N-th remaining image and the first merges the shares.
    Raises `BulkError` before the first image for an unusable output or sources.
    """
    tagger = as_bulk_model(tagger, model, fast)
    if save_attention is not None and not hasattr(tagger, "model"):
        raise BulkError(f"save_attention=... draws SRN's attention maps: the exported model={model} has none")
    state = run_state(tagger.device)
    destination = check_run(sources, output, resume, save_attention, state.num_processes, retry_errors)
    maker = RecordMaker(tagger.labels, tagger.thresholds(threshold, label_thresholds), top_k, all_scores)
    done, retried = {}, 0
    if destination is not None:
        meta = run_meta(tagger, model, maker, save_attention is not None)
        done, retried = prepare_output(destination, meta, state, retry_errors)
    remaining = [position for position, key in enumerate(sources.keys) if record_text(key) not in done]
    schema = parquet_schema(all_scores, save_attention is not None)
    if destination is not None:
        writer = destination.writer(state.process_index, schema, part_rows)
    else:
        writer = StdoutWriter(as_json)
    settings = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "save_attention": save_attention,
        "show_progress": state.is_main_process,
        "report_errors": not as_json,
    }
    try:
        summary = predict_share(
            tagger, sources, remaining[state.process_index :: state.num_processes], maker, writer, settings
        )
    finally:
        writer.close()
    if state.is_main_process:  # counted once, over the whole output
        summary.skipped, summary.earlier_errors, summary.retried = (
            len(sources.keys) - len(remaining),
            sum(done.values()),
            retried,
        )
    state.wait_for_everyone()
    if destination is not None and state.is_main_process:
        destination.finish(schema)
    return total_over_processes(summary, state)
