"""The `srn-hf` command: `srn-hf predict ...` and `srn-hf publish ...`."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="label images with an SRN model; optionally save attention maps")
    predict.add_argument("model", help="model folder written by save_pretrained (with preprocessor_config.json), or a Hub id")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders (their images, recursively)")
    predict.add_argument("--threshold", type=float, help="one score threshold for every label (default: the model config's)")
    predict.add_argument("--label-threshold", action="append", default=[], metavar="LABEL=T", help="threshold of one label (repeatable)")
    predict.add_argument("--top-k", type=int, help="keep at most the K best labels above the thresholds")
    predict.add_argument("--json", action="store_true", help="print a JSON list of {image, labels, error[, attention]}")
    predict.add_argument("--save-attention", metavar="DIR", help="write a PNG per image: the image and each label's attention map")
    predict.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    predict.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: transformers' choice)")
    predict.add_argument("--fast", action="store_true", help="bf16 autocast and channels-last: faster on CPUs with bf16 units and GPUs")
    predict.set_defaults(run=run_predict)

    publish = commands.add_parser("publish", help="write a Hub-ready folder of a trained model and push it")
    publish.add_argument("model_dir", help="folder written by save_pretrained (e.g. OUTPUT_DIR/final of examples/train_stages.py)")
    publish.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository to create or update")
    publish.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps its visibility)")
    publish.add_argument("--dry-run", metavar="OUT_DIR", help="write exactly what would be uploaded to OUT_DIR (an empty folder); push nothing")
    publish.add_argument("--metrics", metavar="METRICS_JSON", help="the training run's metrics.json (default: MODEL_DIR's or its parent's)")
    publish.add_argument("--example-image", metavar="IMAGE", help="image of the attention-map picture (default: a photo bundled with scikit-image)")
    publish.add_argument("--license", help="license of the weights, a Hub license id (default: apache-2.0)")
    publish.add_argument("--dataset-id", action="append", dest="datasets", metavar="DATASET", help="Hub id of a training dataset (repeatable)")
    publish.add_argument("--base-model", metavar="REPO_ID", help="Hub id of the backbone weights training started from")
    publish.add_argument("--tag", action="append", dest="tags", metavar="TAG", help="extra tag of the card (repeatable)")
    publish.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the token of `hf auth login`)")
    publish.add_argument("--commit-message", help="message of the upload commit")
    publish.set_defaults(run=run_publish)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Labels every image with the multi-label pipeline; exit status 1 if some image failed (the others are still
    predicted and printed; failures are reported on stderr, or in the JSON), 2 if the model or arguments are bad."""
    import json
    import logging
    import os

    from tqdm.auto import tqdm
    from transformers import pipeline

    from .images import ImageError, list_image_files
    from .pipeline_srn import TASK
    from .pipeline_srn import logger as pipeline_logger
    from .visualize import save_attention_overlay

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
    files = []
    for given in args.images:
        try:
            files += [os.fspath(path) for path in list_image_files(given)] if os.path.isdir(given) else [given]
        except OSError as error:
            print(f"srn-hf predict: error: {given}: {error}", file=sys.stderr)
    if not files:
        print(f"srn-hf predict: error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    try:
        tagger = pipeline(TASK, model=args.model, device=args.device)
        call_kwargs = {
            "batch_size": args.batch_size,
            "threshold": args.threshold,
            "label_thresholds": label_thresholds or None,
            "top_k": args.top_k,
            "fast": args.fast,
            "return_attention_maps": args.save_attention is not None,
        }
        tagger.thresholds(args.threshold, label_thresholds or None)  # a bad label or value fails before any image
    except (OSError, ValueError) as error:
        print(f"srn-hf predict: error: {args.model}: {error}", file=sys.stderr)
        return 2

    pipeline_logger.setLevel(logging.ERROR)  # failures are reported below, once, between the progress bar updates
    records, failed, used_names = [], 0, set()
    results = tagger((file for file in files), **call_kwargs)
    for file, result in tqdm(zip(files, results), total=len(files), desc="predict", unit="image", disable=len(files) < 2):
        record = {"image": file, "labels": [], "error": None}
        if isinstance(result, ImageError):
            failed += 1
            record["error"] = str(result)
            if not args.json:
                tqdm.write(f"srn-hf predict: error: {result}", file=sys.stderr)
        else:
            record["labels"] = [{"label": item["label"], "score": round(item["score"], 6)} for item in result]
            if args.save_attention is not None:
                record["attention"] = os.fspath(
                    save_attention_overlay(file, result, unique_png_path(args.save_attention, file, used_names))
                )
            if not args.json:
                labels = ", ".join(f"{item['label']} ({item['score']:.3f})" for item in record["labels"])
                tqdm.write(f"{file}\t{labels or '-'}")
        records.append(record)
    if args.json:
        print(json.dumps(records, indent=1))
    if failed:
        print(f"srn-hf predict: {failed} of {len(files)} images could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def unique_png_path(folder: str, image_file: str, used_names: set) -> str:
    """FOLDER/<image stem>_attention.png, numbered when two images share a stem."""
    import os

    stem = os.path.splitext(os.path.basename(image_file))[0]
    name, number = f"{stem}_attention.png", 1
    while name in used_names:
        name, number = f"{stem}_{number}_attention.png", number + 1
    used_names.add(name)
    return os.path.join(folder, name)


def card_options(args: argparse.Namespace):
    """The `CardOptions` of the command line; an option left out keeps the `CardOptions` default."""
    from .hub import CardOptions

    given = {"license": args.license, "datasets": args.datasets, "base_model": args.base_model, "tags": args.tags}
    return CardOptions(**{name: value for name, value in given.items() if value is not None})


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
            card=card_options(args),
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
