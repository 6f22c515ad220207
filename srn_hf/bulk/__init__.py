"""Bulk tagging: `srn-hf predict` over folders, file lists or a `datasets` dataset, streamed to JSONL or parquet.

```bash
srn-hf predict MODEL photos/ --output tags.jsonl                        # one JSON record a line, written as it goes
srn-hf predict MODEL --file-list paths.txt --output tags.parquet --all-scores
srn-hf predict MODEL --data coco2014 --data-option root=coco --split validation --output coco.parquet
srn-hf predict MODEL photos/ --output tags.jsonl --resume               # after a kill: the images not yet written
srn-hf predict MODEL photos/ --output tags.jsonl --resume --retry-errors # and the images whose records hold an error
accelerate launch --multi_gpu --num_processes 4 -m srn_hf.cli predict MODEL photos/ --output tags.jsonl  # 4 shares
srn-hf predict MODEL photos/ --engine ray --output tags.parquet          # Ray Data: this machine or a cluster
```

One record per image:

    image       the file's path (a byte that is not UTF-8 written `\\xNN`), or the dataset's `image_id`
    labels      [{"label", "score"}, ...], the labels whose sigmoid score exceeds their threshold, best first
    error       why the image could not be predicted (it names the file), else null; the run goes on
    scores      with `--all-scores`: every label's sigmoid score, in the order of the model's `id2label`
    attention   with `--save-attention DIR`: the PNG of the image's attention maps

How it runs: images are opened and preprocessed in `DataLoader` worker processes (`num_workers`); the model runs
on batches in the main process; records are written after each batch (JSONL, flushed) or every `part_rows`
records (parquet parts, each a complete file), so that memory does not grow with the number of images and a
killed run loses at most the records of its last batch (JSONL) or last part (parquet). A full disk stops the run
with `srn_hf.storage.StorageError` naming the file: a batch's JSONL records are appended whole or cut back off, parts,
the final merge and `OUTPUT.meta.json` are written under a temporary name and renamed, so `resume=True` completes it.

Beside the output, `OUTPUT.meta.json` says which model wrote it (the SHA-256 of its weights), with which labels,
thresholds and options: `resume=True` refuses an output of another model or label set, then skips every image the
output already holds, so that a killed run continued gives exactly one record per image; with `retry_errors=True` it
first drops the records that hold an error, whose images are then predicted again. Parquet parts, and the
records of the processes other than the first under `accelerate launch`, live in `OUTPUT.parts/` until the run
ends; the first process then merges them into OUTPUT. Records are in the order they were predicted (the input
order in a single process).

The package, by part: `sources` (folders, file lists, `datasets` splits), `models` (an SRN model or an exported
folder, the same for every engine), `records` (a record's fields, naming and labels: the pipeline's decision),
`writers` (OUTPUT, its meta file and parts, resuming), and the engines: `local` (one process, or N under
`accelerate launch`) and `ray` (Ray Data, imported only when used; the ray extra).
"""

from .local import check_run, run_state, tag_images
from .models import ExportedModel, PipelineModel, load_bulk_model
from .records import (
    META_SUFFIX,
    OUTPUT_FORMATS,
    PARTS_SUFFIX,
    RECORD_SETTINGS,
    BulkError,
    RecordMaker,
    Summary,
    parquet_schema,
    record_text,
    run_meta,
    weights_digest,
)
from .sources import (
    ImageRows,
    Sources,
    collate_rows,
    dataset_sources,
    file_sources,
    given_sources,
    open_dataset_image,
    parse_data_options,
    preprocessed_image,
)
from .writers import (
    JsonlWriter,
    Output,
    ParquetFolderOutput,
    ParquetPartWriter,
    StdoutWriter,
    check_output,
    prepare_output,
)

__all__ = [
    "BulkError",
    "ExportedModel",
    "ImageRows",
    "JsonlWriter",
    "META_SUFFIX",
    "OUTPUT_FORMATS",
    "Output",
    "PARTS_SUFFIX",
    "ParquetFolderOutput",
    "ParquetPartWriter",
    "PipelineModel",
    "RECORD_SETTINGS",
    "RecordMaker",
    "Sources",
    "StdoutWriter",
    "Summary",
    "check_output",
    "check_run",
    "collate_rows",
    "dataset_sources",
    "file_sources",
    "given_sources",
    "load_bulk_model",
    "open_dataset_image",
    "parquet_schema",
    "parse_data_options",
    "prepare_output",
    "preprocessed_image",
    "record_text",
    "run_meta",
    "run_state",
    "tag_images",
    "weights_digest",
]
