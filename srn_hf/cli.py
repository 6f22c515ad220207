"""The `srn-hf` command: `srn-hf predict ...`, `srn-hf export ...` and `srn-hf publish ...`."""

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="label images with an SRN model; optionally save attention maps")
    # PREDICT ARGUMENTS (issue 3)
    predict.add_argument("model", help="model folder written by save_pretrained (with preprocessor_config.json), or a Hub id")
    predict.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files and folders (their images, recursively)")
    predict.add_argument("--file-list", metavar="FILE", help="a text file of image paths, one a line")
    predict.add_argument("--data", metavar="KIND", help="a dataset of srn_hf.data (coco2014, voc2007, imagefolder, csv, hub, ...)")
    predict.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="an option of the --data loader (repeatable)")
    predict.add_argument("--split", help="the --data split to predict (default: the only split, else test)")
    predict.add_argument("--threshold", type=float, help="one score threshold for every label (default: the model config's)")
    predict.add_argument("--label-threshold", action="append", default=[], metavar="LABEL=T", help="threshold of one label (repeatable)")
    predict.add_argument("--top-k", type=int, help="keep at most the K best labels above the thresholds")
    written = predict.add_mutually_exclusive_group()
    written.add_argument("--json", action="store_true", help="print a JSON list of {image, labels, error[, attention]}")
    written.add_argument("--output", metavar="FILE", help="write one record per image to FILE.jsonl or FILE.parquet as the run goes")
    predict.add_argument("--resume", action="store_true", help="continue --output: skip the images it holds (same model and options)")
    predict.add_argument("--all-scores", action="store_true", help="add every label's score (in id2label order) to each record")
    predict.add_argument("--save-attention", metavar="DIR", help="write a PNG per image: the image and each label's attention map")
    predict.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    predict.add_argument("--num-workers", type=int, default=2, help="DataLoader processes that open and preprocess images (default: 2)")
    predict.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: transformers' choice)")
    predict.add_argument("--fast", action="store_true", help="bf16 autocast and channels-last: faster on CPUs with bf16 units and GPUs")
    predict.set_defaults(run=run_predict)

    export = commands.add_parser("export", help="export a model to ONNX or torch.export, with its processor and thresholds")
    export.add_argument("model_dir", help="folder written by save_pretrained")
    export.add_argument("out_dir", help="the folder to write (empty or absent)")
    export.add_argument("--format", choices=["onnx", "torch-export"], default="onnx", help="onnx (model.onnx) or torch-export (model.pt2)")
    export.add_argument("--image-size", type=int, help="input side of the graph (default: the model's image_size)")
    export.add_argument("--attention-maps", action="store_true", help="add the output attention_maps (B x C x h x w)")
    export.add_argument("--fast", action="store_true", help="export the bf16 channels-last fast path (torch-export only)")
    export.set_defaults(run=run_export)

    publish = commands.add_parser("publish", help="write a Hub-ready folder of a trained model and push it")
    # PUBLISH ARGUMENTS (issue 6)
    publish.add_argument("model_dir", help="folder written by save_pretrained (e.g. OUTPUT_DIR/final of examples/train_stages.py)")
    publish.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository to create or update")
    publish.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps its visibility)")
    publish.add_argument("--dry-run", metavar="OUT_DIR", help="write exactly what would be uploaded to OUT_DIR (an empty folder); push nothing")
    publish.add_argument("--metrics", metavar="METRICS_JSON", help="the training run's metrics.json (default: MODEL_DIR's or its parent's)")
    publish.add_argument("--example-image", metavar="IMAGE", help="image of the attention-map picture (default: a photo bundled with scikit-image)")
    publish.add_argument("--license", default="apache-2.0", help="license of the weights, a Hub license id (default: apache-2.0)")
    publish.add_argument("--dataset-id", action="append", dest="datasets", metavar="DATASET", help="Hub id of a training dataset (repeatable)")
    publish.add_argument("--base-model", metavar="REPO_ID", help="Hub id of the backbone weights training started from")
    publish.add_argument("--tag", action="append", dest="tags", metavar="TAG", help="extra tag of the card (repeatable)")
    publish.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the token of `hf auth login`)")
    publish.add_argument("--commit-message", help="message of the upload commit")
    publish.set_defaults(run=run_publish)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Labels every image (see `srn_hf.bulk`); exit status 1 if some image failed (the others are still predicted;
    failures are reported on stderr and in the records), 2 if the model, the sources or the arguments are bad."""
    from transformers import pipeline

    from .bulk import BulkError, check_output, given_sources, run_state, tag_images
    from .pipeline_srn import TASK
    from .pipeline_srn import logger as pipeline_logger

    label_thresholds = {}
    for item in args.label_threshold:
        name, separator, value = item.rpartition("=")
        try:
            label_thresholds[name] = float(value)
        except ValueError:
            separator = ""
        if not separator or not name:
            print(f"srn-hf predict: error: --label-threshold {item!r} is not LABEL=THRESHOLD", file=sys.stderr)
            return 2
    if args.top_k is not None and args.top_k < 1:
        print(f"srn-hf predict: error: --top-k {args.top_k} must be at least 1", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.num_workers < 0:
        print("srn-hf predict: error: --batch-size must be at least 1 and --num-workers at least 0", file=sys.stderr)
        return 2
    try:
        sources = given_sources(args.images, args.file_list, args.data, args.data_option, args.split)
        for problem in sources.unreadable:
            print(f"srn-hf predict: error: {problem}", file=sys.stderr)
        if not sources.keys:
            raise BulkError(f"no image files in {' '.join(args.images + [args.file_list or args.data or ''])}".rstrip())
        if args.output is not None:
            check_output(args.output, args.resume)  # before the model is loaded; checked again by tag_images
        elif args.resume:
            raise BulkError("--resume continues an --output file: pass --output")
    except (BulkError, OSError, ValueError) as error:  # also the --data loaders' AnnotationError, a ValueError
        print(f"srn-hf predict: error: {error}", file=sys.stderr)
        return 2
    try:
        state = run_state(args.device)  # under accelerate launch, each process on its own device
        tagger = pipeline(TASK, model=args.model, device=state.device if state.num_processes > 1 else args.device)
        tagger.thresholds(args.threshold, label_thresholds or None)  # a bad label or value fails before any image
    except (OSError, ValueError) as error:
        print(f"srn-hf predict: error: {args.model}: {error}", file=sys.stderr)
        return 2
    pipeline_logger.setLevel(logging.ERROR)
    try:
        summary = tag_images(
            tagger, sources, args.model, output=args.output, resume=args.resume, as_json=args.json,
            batch_size=args.batch_size, num_workers=args.num_workers, fast=args.fast, threshold=args.threshold,
            label_thresholds=label_thresholds or None, top_k=args.top_k, all_scores=args.all_scores,
            save_attention=args.save_attention,
        )  # fmt: skip
    except BulkError as error:
        print(f"srn-hf predict: error: {error}", file=sys.stderr)
        return 2
    if summary.skipped:
        print(f"srn-hf predict: {summary.skipped} images already in {args.output}, skipped", file=sys.stderr)
    if summary.failed:
        print(f"srn-hf predict: {summary.failed} of {summary.predicted} images could not be predicted", file=sys.stderr)
    return 1 if summary.failed else 0


def run_export(args: argparse.Namespace) -> int:
    """Exports MODEL_DIR to OUT_DIR (see `srn_hf.export`); exit status 2 if the model or the arguments are bad."""
    from .export import export_model

    try:
        graph = export_model(args.model_dir, args.out_dir, args.format, args.image_size, args.attention_maps, args.fast)
    except (OSError, ValueError) as error:
        print(f"srn-hf export: error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.model_dir} to {graph} (with config.json, preprocessor_config.json, thresholds.json)")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    """Writes the Hub folder of MODEL_DIR and pushes it in one commit (or only writes it, with --dry-run)."""
    from .hub import hub_folder_files, publish

    try:
        result = publish(
            args.model_dir,
            args.repo_id,
            private=args.private,
            dry_run_dir=args.dry_run,
            token=args.token,
            commit_message=args.commit_message,
            metrics=args.metrics,
            example_image=args.example_image,
            license=args.license,
            datasets=args.datasets,
            base_model=args.base_model,
            tags=args.tags,
        )
    except (ValueError, OSError) as error:  # bad folder, metrics, image, repository id, token, or a Hub error
        print(f"srn-hf publish: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run, nothing pushed: one commit to {args.repo_id} would upload the files of {result}:")
        for name in hub_folder_files(result):
            print(f"  {name:<28} {(result / name).stat().st_size:>12,} bytes")
    else:
        print(f"published {args.repo_id} in one commit: {result.commit_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
