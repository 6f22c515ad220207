"""The `srn-hf` command: `srn-hf predict ...`, `srn-hf export ...`, `srn-hf calibrate ...`, `srn-hf publish ...` and
`srn-hf demo ...`."""

import argparse
import ast
import logging
import re
import sys
from pathlib import Path

# Only the standard library is imported until the arguments are parsed: `--help` answers at once. The run functions
# import what they use (torch, transformers, datasets) and `main` registers SRN with transformers and timm.

EXAMPLES = """examples:
  srn-hf predict outputs/demo/final photos/                  label a folder of images (tuned thresholds)
  srn-hf predict MODEL photos/ --output tags.jsonl --resume  a large folder, written as it goes, resumable
  srn-hf calibrate outputs/demo/final --data imagefolder --data-option data_dir=labelled --write
  srn-hf export outputs/demo/final exported/                 ONNX (model.onnx) with processor and thresholds
  srn-hf publish outputs/demo/final --repo-id ORG/NAME --dry-run hub-folder
  srn-hf demo outputs/demo/final                             the demo page at http://127.0.0.1:7860/

`srn-hf COMMAND --help` gives each command's options."""


# The Python parameters that library errors name (`output=...`, `resume=True`, `split='test'`), as each command's
# flags: [`flag_worded`] writes a message for the command line.
FLAGS = {
    "predict": {
        "images": "IMAGE_OR_DIR",
        "file_list": "--file-list",
        "data": "--data",
        "data_options": "--data-option",
        "split": "--split",
        "output": "--output",
        "resume": "--resume",
        "retry_errors": "--retry-errors",
        "save_attention": "--save-attention",
        "trust_remote_code": "--trust-remote-code",
        "ray_address": "--ray-address",
    },
    "demo": {"trust_remote_code": "--trust-remote-code"},
    "export": {
        "format": "--format",
        "image_size": "--image-size",
        "fast": "--fast",
        "quantize": "--quantize",
        "calibration_images": "--calibration-images",
        "calibration_count": "--calibration-count",
        "calibration_method": "--calibration-method",
        "images": "--calibration-images",
        "file_list": "--calibration-images",
        "data": "--data",
        "data_options": "--data-option",
        "split": "--split",
    },
    "calibrate": {
        "data": "--data",
        "data_options": "--data-option",
        "split": "--split",
        "criterion": "--criterion",
        "min_positives": "--min-positives",
        "allow_overlap": "--allow-overlap",
    },
}


def flag_worded(message: str, flags: dict[str, str]) -> str:
    """`message` with the Python parameters it names written as the command-line flags `flags` maps them to:
    `name=True` and `name=...` become the flag alone, `name='value'` and `name=value` the flag and the value, and
    `name item` (one item of a list parameter) the flag. `resume=True with output=a.jsonl` -> `--resume with
    --output a.jsonl`."""
    for name, flag in flags.items():
        parameter = rf"(?<![\w.]){re.escape(name)}"
        message = re.sub(rf"{parameter}=(True\b|\.\.\.)", flag, message)  # flags hold no backslash
        message = re.sub(rf"{parameter}='([^']*)'", rf"{flag} \1", message)
        message = re.sub(rf"{parameter}=", f"{flag} ", message)
        message = re.sub(rf"{parameter} item\b", flag, message)
    return message


def command_line_message(command: str, error: BaseException, message: str) -> str:
    """`message`, the one line of `error`, as `srn-hf COMMAND` prints it: the parameters it names written as the
    command's flags ([`flag_worded`]), but for a model folder's problem, which names the fields of its config.json
    (some share a name with a parameter: `image_size`)."""
    from .model_folder import ModelFolderError, RemoteCodeError

    if isinstance(error, RemoteCodeError):  # the flag that lets the code run, where the command has one
        return error.worded(FLAGS.get(command, {}).get("trust_remote_code"))
    return message if isinstance(error, ModelFolderError) else flag_worded(message, FLAGS.get(command, {}))


def data_kinds_help() -> str:
    """The dataset kinds of `--data` with their loader's options, read from srn_hf/data's source (not imported, so
    that `--help` stays quick): `LOADERS` in data/__init__.py and the signature of each loader."""
    data_dir = Path(__file__).with_name("data")
    package = ast.parse((data_dir / "__init__.py").read_text(encoding="utf-8"))
    modules = {
        alias.asname or alias.name: node.module
        for node in package.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    loaders = next(
        node.value for node in package.body if isinstance(node, ast.Assign) and node.targets[0].id == "LOADERS"
    )
    lines = ["dataset kinds of --data and their --data-option keys (values parsed as YAML):"]
    for kind, loader in zip(loaders.keys, loaders.values):
        module = ast.parse((data_dir / f"{modules[loader.id]}.py").read_text(encoding="utf-8"))
        function = next(node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == loader.id)
        options = [argument.arg for argument in function.args.args + function.args.kwonlyargs]
        if function.args.kwarg is not None:
            options.append(f"**{function.args.kwarg.arg}")
        lines.append(f"  {kind.value:<13} {', '.join(options)}")
    return "\n".join(lines)


def add_trust_remote_code_option(command) -> None:
    """`--trust-remote-code`, of the commands that load any model through a pipeline (predict, demo)."""
    command.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code a model folder or repository brings (its config.json's auto_map), for a model "
        "type srn_hf and transformers do not know; never without this flag",
    )


def add_predict_command(commands) -> None:
    """`srn-hf predict MODEL IMAGE_OR_DIR...`: the options of `run_predict`."""
    predict = commands.add_parser(
        "predict",
        help="label images with an SRN model; optionally save attention maps",
        epilog=data_kinds_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "model",
        help="model folder written by save_pretrained (with preprocessor_config.json), a Hub id, or a folder written "
        "by srn-hf export (ONNX Runtime)",
    )
    predict.add_argument(
        "images", nargs="*", metavar="IMAGE_OR_DIR", help="image files and folders (their images, recursively)"
    )
    predict.add_argument("--file-list", metavar="FILE", help="a text file of image paths, one a line")
    predict.add_argument(
        "--data", metavar="KIND", help="a dataset of srn_hf.data (coco2014, voc2007, imagefolder, csv, hub, ...)"
    )
    predict.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the --data loader, value parsed as YAML (repeatable)",
    )
    predict.add_argument("--split", help="the --data split to predict (default: the only split, else test)")
    predict.add_argument(
        "--threshold", type=float, help="one score threshold for every label (default: the model config's)"
    )
    predict.add_argument(
        "--label-threshold", action="append", default=[], metavar="LABEL=T", help="threshold of one label (repeatable)"
    )
    predict.add_argument("--top-k", type=int, help="keep at most the K best labels above the thresholds")
    written = predict.add_mutually_exclusive_group()
    written.add_argument("--json", action="store_true", help="print a JSON list of {image, labels, error[, attention]}")
    written.add_argument(
        "--output", metavar="FILE", help="write one record per image to FILE.jsonl or FILE.parquet as the run goes"
    )
    predict.add_argument(
        "--resume", action="store_true", help="continue --output: skip the images it holds (same model and options)"
    )
    predict.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: predict again the images whose records hold an error",
    )
    predict.add_argument(
        "--all-scores", action="store_true", help="add every label's score (in id2label order) to each record"
    )
    predict.add_argument(
        "--save-attention", metavar="DIR", help="write a PNG per image: the image and each label's attention map"
    )
    predict.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    predict.add_argument(
        "--num-workers", type=int, default=2, help="DataLoader processes that open and preprocess images (default: 2)"
    )
    predict.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: transformers' choice)"
    )
    predict.add_argument(
        "--fast", action="store_true", help="bf16 autocast and channels-last: faster on CPUs with bf16 units and GPUs"
    )
    add_trust_remote_code_option(predict)
    predict.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (N under accelerate launch); ray: Ray Data, here or on a cluster, --output a "
        "*.parquet folder (needs srn_hf[ray]); default: local",
    )
    predict.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --engine ray: a running cluster (auto, HOST:PORT, ray://HOST:10001); default: a local Ray with "
        "this machine's cores",
    )
    predict.add_argument(
        "--num-actors",
        type=int,
        help="with --engine ray: model copies tagging at once (default: the cluster's CPUs / --cpus-per-actor)",
    )
    predict.add_argument(
        "--cpus-per-actor",
        type=float,
        help="with --engine ray: CPUs each actor reserves, its torch threads (default: 1; on a local Ray with "
        "--num-actors N, the machine's cores / N)",
    )
    predict.add_argument(
        "--gpus-per-actor", type=float, help="with --engine ray: GPUs each actor reserves (default: 0)"
    )
    predict.set_defaults(run=run_predict)


def add_export_command(commands) -> None:
    """`srn-hf export MODEL_DIR OUT_DIR`: the options of `run_export`."""
    export = commands.add_parser(
        "export", help="export a model to ONNX or torch.export, with its processor and thresholds"
    )
    export.add_argument("model_dir", help="folder written by save_pretrained")
    export.add_argument("out_dir", help="the folder to write (empty or absent)")
    export.add_argument(
        "--format",
        choices=["onnx", "torch-export"],
        default="onnx",
        help="onnx (model.onnx) or torch-export (model.pt2); default: onnx",
    )
    export.add_argument("--image-size", type=int, help="input side of the graph (default: the model's image_size)")
    export.add_argument("--attention-maps", action="store_true", help="add the output attention_maps (B x C x h x w)")
    export.add_argument(
        "--fast", action="store_true", help="export the bf16 channels-last fast path (torch-export only)"
    )
    quantized = export.add_argument_group("INT8 (static quantization of the ONNX graph, docs/deploy.md)")
    quantized.add_argument("--quantize", metavar="TYPE", help="quantize the ONNX graph: int8")
    quantized.add_argument(
        "--calibration-images", metavar="SOURCE", help="a folder of images, or a text file of image paths (one a line)"
    )
    quantized.add_argument(
        "--data", metavar="KIND", help="or a dataset of srn_hf.data: calibrates on its --split, tunes thresholds on it"
    )
    quantized.add_argument(
        "--data-option", action="append", default=[], metavar="KEY=VALUE", help="loader option (repeatable)"
    )
    quantized.add_argument("--split", default="validation", help="the --data split (default: validation; never test)")
    quantized.add_argument(
        "--calibration-count", type=int, default=256, help="calibration images used at most, evenly spaced (256)"
    )
    quantized.add_argument(
        "--calibration-method", help="percentile (the default: 99.999 %% of each activation's values) or minmax"
    )
    export.set_defaults(run=run_export)


def add_calibrate_command(commands) -> None:
    """`srn-hf calibrate MODEL_DIR --data KIND`: the options of `run_calibrate`."""
    calibrate = commands.add_parser(
        "calibrate",
        help="tune a model's thresholds on a validation split; optionally store them",
        epilog=data_kinds_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument(
        "model_dir",
        help="folder written by save_pretrained (e.g. OUTPUT_DIR/final of examples/train_stages.py), or by srn-hf "
        "export (scored by its own graph, e.g. an INT8 one)",
    )
    calibrate.add_argument(
        "--data",
        required=True,
        metavar="KIND",
        help="dataset kind of srn_hf.data (imagefolder, csv, hub, coco2014, voc2007, ...)",
    )
    calibrate.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, value parsed as YAML (repeatable)",
    )
    calibrate.add_argument("--split", default="validation", help="split to tune on (default: validation; never test)")
    calibrate.add_argument(
        "--criterion",
        default="f1",
        help="f1 (each label's F1, OF1 globally) or precision:P (highest recall at precision >= P)",
    )
    calibrate.add_argument(
        "--min-positives",
        type=int,
        default=5,
        help="labels with fewer positive images get the global threshold (default: 5)",
    )
    calibrate.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    calibrate.add_argument(
        "--allow-overlap",
        action="store_true",
        help="tune on images the model's training run trained or tested on (its splits.json); refused otherwise",
    )
    calibrate.add_argument(
        "--write",
        action="store_true",
        help="store the thresholds in MODEL_DIR/config.json (and an export folder's thresholds.json); nothing else",
    )
    calibrate.set_defaults(run=run_calibrate)


def add_publish_command(commands) -> None:
    """`srn-hf publish MODEL_DIR --repo-id ORG/NAME`: the options of `run_publish`."""
    publish = commands.add_parser("publish", help="write a Hub-ready folder of a trained model and push it")
    publish.add_argument(
        "model_dir", help="folder written by save_pretrained (e.g. OUTPUT_DIR/final of examples/train_stages.py)"
    )
    publish.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository to create or update")
    publish.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one keeps its visibility)"
    )
    publish.add_argument(
        "--dry-run",
        metavar="OUT_DIR",
        help="write exactly what would be uploaded to OUT_DIR (an empty folder); push nothing",
    )
    publish.add_argument(
        "--metrics",
        metavar="METRICS_JSON",
        help="the training run's metrics.json (default: MODEL_DIR's or its parent's)",
    )
    publish.add_argument(
        "--example-image",
        metavar="IMAGE",
        help=(
            "image of the attention-map picture (default: the training run's first test image, kept beside "
            "metrics.json, with its true labels)"
        ),
    )
    publish.add_argument("--license", help="license of the weights, a Hub license id (default: apache-2.0)")
    publish.add_argument(
        "--dataset-id",
        action="append",
        dest="datasets",
        metavar="DATASET",
        help="Hub id of a training dataset (repeatable)",
    )
    publish.add_argument("--base-model", metavar="REPO_ID", help="Hub id of the backbone weights training started from")
    publish.add_argument(
        "--tag", action="append", dest="tags", metavar="TAG", help="extra tag of the card (repeatable)"
    )
    publish.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the token of `hf auth login`)")
    publish.add_argument("--commit-message", help="message of the upload commit")
    publish.add_argument(
        "--space",
        metavar="ORG/NAME",
        help="also publish a Gradio Space that demos the model (srn_hf.app), loading it by --repo-id",
    )
    publish.add_argument(
        "--space-requirement",
        metavar="SPEC",
        help="pip requirement of srn_hf in the Space's requirements.txt (default: srn_hf[app]==VERSION)",
    )
    publish.set_defaults(run=run_publish)


def add_demo_command(commands) -> None:
    """`srn-hf demo MODEL`: the options of `run_demo`."""
    demo = commands.add_parser("demo", help="serve the demo page of an SRN model in the browser (needs srn_hf[app])")
    demo.add_argument(
        "model", help="model folder written by save_pretrained (with preprocessor_config.json), or a Hub id"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    demo.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    demo.add_argument("--share", action="store_true", help="also open a public link through Gradio's share servers")
    demo.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: transformers' choice)")
    demo.add_argument(
        "--fast", action="store_true", help="bf16 autocast and channels-last: faster on CPUs with bf16 units and GPUs"
    )
    demo.add_argument(
        "--example",
        action="append",
        metavar="IMAGE",
        dest="examples",
        help=(
            "an example image of the page (repeatable; default: the model's own test images that its training run "
            "kept, with their true labels)"
        ),
    )
    add_trust_remote_code_option(demo)
    demo.set_defaults(run=run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `srn-hf` and its commands; every command takes `--debug`."""
    parser = argparse.ArgumentParser(
        prog="srn-hf", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        add_predict_command,
        add_export_command,
        add_calibrate_command,
        add_publish_command,
        add_demo_command,
    ):
        add_command(commands)
    for command in [parser, *commands.choices.values()]:  # every command, those added above it included
        command.add_argument(
            "--debug",
            action="store_true",
            default=False if command is parser else argparse.SUPPRESS,
            help="show the full traceback of an error instead of its one-line message",
        )
    return parser


def label_thresholds_option(items: list[str]) -> dict[str, float]:
    """The `--label-threshold LABEL=T` items as {label: threshold}; a ValueError names a malformed item."""
    label_thresholds = {}
    for item in items:
        name, separator, value = item.rpartition("=")
        try:
            label_thresholds[name] = float(value)
        except ValueError:
            separator = ""
        if not separator or not name:
            raise ValueError(f"--label-threshold {item!r} is not LABEL=THRESHOLD")
    return label_thresholds


def check_predict_options(args: argparse.Namespace) -> None:
    """A ValueError names a bad --top-k, --batch-size or --num-workers."""
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k} must be at least 1")
    if args.batch_size < 1 or args.num_workers < 0:
        raise ValueError("--batch-size must be at least 1 and --num-workers at least 0")
    ray_options = (args.ray_address, args.num_actors, args.cpus_per_actor, args.gpus_per_actor)
    if args.engine != "ray" and any(option is not None for option in ray_options):
        raise ValueError(
            "--ray-address, --num-actors, --cpus-per-actor and --gpus-per-actor are options of --engine ray"
        )
    if (args.cpus_per_actor is not None and args.cpus_per_actor <= 0) or (args.gpus_per_actor or 0) < 0:
        raise ValueError("--cpus-per-actor must be above 0 and --gpus-per-actor at least 0")
    if args.num_actors is not None and args.num_actors < 1:
        raise ValueError(f"--num-actors {args.num_actors} must be at least 1")
    if args.engine == "ray" and (args.output is None or args.save_attention is not None):
        raise ValueError("--engine ray writes its records to --output FILE.parquet (no stdout, no --save-attention)")


def predict_sources(args: argparse.Namespace):
    """The images to label (`srn_hf.bulk.given_sources`), each unreadable one reported on stderr.

    Raises:
        BulkError: no image at all, or an --output (or --resume without it) that cannot be written or continued;
            before the model is loaded. The --data loaders raise ValueError or OSError.
    """
    from .bulk import BulkError, Output, ParquetFolderOutput, check_output, given_sources

    if not args.images and args.file_list is None and args.data is None:
        raise BulkError("no image source given: pass IMAGE_OR_DIR, --file-list FILE or --data KIND")
    sources = given_sources(args.images, args.file_list, args.data, args.data_option, args.split)
    for problem in sources.unreadable:
        print(f"srn-hf predict: error: {problem}", file=sys.stderr)
    if not sources.keys:
        raise BulkError(f"no image files in {' '.join(args.images + [args.file_list or args.data or ''])}".rstrip())
    if args.output is not None:  # before the model is loaded; again by the engine
        kind = ParquetFolderOutput if args.engine == "ray" else Output
        check_output(args.output, args.resume, args.retry_errors, kind)
    elif args.resume or args.retry_errors:
        raise BulkError("--resume and --retry-errors continue an --output file: pass --output")
    return sources


def predict_model(args: argparse.Namespace, label_thresholds: dict[str, float]):
    """The bulk model of MODEL (`srn_hf.bulk.load_bulk_model`: an SRN folder or Hub id through its pipeline, or an
    exported folder), on this process's device, its thresholds checked.

    Raises:
        ModelFolderError: naming the model folder (or Hub id) and what is wrong with it, or a bad threshold.
    """
    from transformers.utils.logging import disable_progress_bar

    from .bulk import load_bulk_model, run_state
    from .model_folder import ModelFolderError, one_line

    disable_progress_bar()  # the weights load in a moment; a refusal after loading stays one line
    state = run_state(args.device)  # under accelerate launch, each process on its own device
    device = state.device if state.num_processes > 1 else args.device
    model = load_bulk_model(args.model, device, args.fast, trust_remote_code=args.trust_remote_code)
    try:
        model.thresholds(args.threshold, label_thresholds or None)  # a bad label or value fails before any image
    except ValueError as error:
        raise ModelFolderError(f"{args.model}: {one_line(error)}") from error
    return model


def run_ray_engine(args: argparse.Namespace, sources, label_thresholds: dict[str, float]):
    """`srn_hf.bulk.ray.tag_with_ray` with the command's options."""
    from .bulk.ray import tag_with_ray

    return tag_with_ray(
        args.model,
        sources,
        args.output,
        resume=args.resume,
        retry_errors=args.retry_errors,
        address=args.ray_address,
        num_actors=args.num_actors,
        batch_size=args.batch_size,
        threshold=args.threshold,
        label_thresholds=label_thresholds or None,
        top_k=args.top_k,
        all_scores=args.all_scores,
        fast=args.fast,
        device=args.device,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor or 0.0,
        trust_remote_code=args.trust_remote_code,
    )


def run_predict(args: argparse.Namespace) -> int:
    """Labels every image (see `srn_hf.bulk`). Exit status: 0 when every record holds labels; 1 when some image could
    not be predicted (the others still are; each is reported on stderr and in its record), with --resume also when
    records kept from an earlier run hold an error (--retry-errors predicts them again); 2 when the model, the
    sources, the arguments or the output are refused, or a write fails (nothing written is lost)."""
    from .bulk import BulkError, tag_images
    from .pipeline_srn import logger as pipeline_logger

    try:
        label_thresholds = label_thresholds_option(args.label_threshold)
        check_predict_options(args)
        sources = predict_sources(args)
    except (BulkError, OSError, ValueError) as error:  # also the --data loaders' AnnotationError, a ValueError
        print(f"srn-hf predict: error: {command_line_message('predict', error, str(error))}", file=sys.stderr)
        return 2
    pipeline_logger.setLevel(logging.ERROR)
    try:
        if args.engine == "ray":
            summary = run_ray_engine(args, sources, label_thresholds)
        else:
            summary = tag_images(
                predict_model(args, label_thresholds),
                sources,
                args.model,
                output=args.output,
                resume=args.resume,
                as_json=args.json,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                threshold=args.threshold,
                label_thresholds=label_thresholds or None,
                top_k=args.top_k,
                all_scores=args.all_scores,
                save_attention=args.save_attention,
                retry_errors=args.retry_errors,
            )
    except BulkError as error:
        print(f"srn-hf predict: error: {command_line_message('predict', error, str(error))}", file=sys.stderr)
        return 2
    if summary.skipped:
        print(f"srn-hf predict: {summary.skipped} images already in {args.output}, skipped", file=sys.stderr)
    if summary.retried:
        print(
            f"srn-hf predict: {summary.retried} records with an error dropped from {args.output}, predicted again",
            file=sys.stderr,
        )
    if summary.failed:
        print(f"srn-hf predict: {summary.failed} of {summary.predicted} images could not be predicted", file=sys.stderr)
    if summary.earlier_errors:
        print(
            f"srn-hf predict: {summary.earlier_errors} records kept in {args.output} from an earlier run hold an error "
            "(--resume --retry-errors predicts them again)",
            file=sys.stderr,
        )
    return 1 if summary.output_errors else 0


def run_export(args: argparse.Namespace) -> int:
    """Exports MODEL_DIR to OUT_DIR (see `srn_hf.export`), quantized with --quantize (`srn_hf.quantize`); exit status
    2 if the model or the arguments are bad."""
    from .export import export_model

    try:
        if args.quantize is not None:
            return run_export_quantized(args)
        if args.calibration_images or args.data:
            raise ValueError("--calibration-images and --data calibrate a quantization: pass --quantize int8")
        graph = export_model(args.model_dir, args.out_dir, args.format, args.image_size, args.attention_maps, args.fast)
    except (OSError, ValueError) as error:
        print(f"srn-hf export: error: {command_line_message('export', error, str(error))}", file=sys.stderr)
        return 2
    print(f"exported {args.model_dir} to {graph} (with config.json, preprocessor_config.json, thresholds.json)")
    return 0


def run_export_quantized(args: argparse.Namespace) -> int:
    """`srn-hf export --quantize int8`: the INT8 folder, and what it was calibrated on and how its thresholds were
    chosen."""
    import os

    from .bulk import given_sources, parse_data_options
    from .quantize import DEFAULT_CALIBRATION_METHOD, check_quantize_options, export_quantized

    # Before any image is read:
    args.calibration_method = args.calibration_method or DEFAULT_CALIBRATION_METHOD
    check_quantize_options(args.quantize, args.calibration_method, args.calibration_count, args.data and args.split)
    if bool(args.calibration_images) == bool(args.data):
        raise ValueError("--quantize needs calibration images: pass --calibration-images SOURCE or --data KIND")
    if args.fast:
        raise ValueError("--fast exports the bf16 fast path, which is not quantized: leave --fast out")
    if args.data:
        sources = given_sources([], None, args.data, args.data_option, args.split)
        name = f"--data {args.data} --split {args.split}"
    elif os.path.isdir(args.calibration_images):
        sources = given_sources([args.calibration_images], None, None, [], None)
        name = args.calibration_images
    else:
        sources = given_sources([], args.calibration_images, None, [], None)
        name = args.calibration_images
    result = export_quantized(
        args.model_dir,
        args.out_dir,
        sources,
        args.quantize,
        args.format,
        args.calibration_method,
        args.calibration_count,
        args.image_size,
        args.attention_maps,
        (args.data, parse_data_options(args.data_option), args.split) if args.data else None,
        name,
    )
    record, calibration = result["quantization"], result["calibration"]
    if result["unreadable"]:
        print(
            f"srn-hf export: {len(result['unreadable'])} calibration images could not be read, left out (the first: "
            f"{result['unreadable'][0]})",
            file=sys.stderr,
        )
    print(
        f"exported {args.model_dir} to {result['graph']}: {record['type']} ({record['format']}, weights "
        f"{record['weights']}, activations {record['activations']}), calibrated by {record['calibration_method']} on "
        f"{record['calibration_images']} images; float32 operators: {', '.join(record['float_operators']) or 'none'}; "
        f"float32 layers: {', '.join(record['float_weights']) or 'none'} ({len(record['float_nodes'])} nodes); "
        + (
            f"bias correction of {record['bias_correction']['layers']} layers on the same images"
            if record["bias_correction"]
            else "no bias correction"
        )
    )
    if calibration is None:
        print(
            "thresholds copied from the float model, not tuned on the int8 scores (tune them: srn-hf calibrate "
            f"{args.out_dir} --data KIND ... --write)"
        )
    else:
        print(f"thresholds tuned on the int8 scores of the {args.split} split ({calibration.images} images)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Prints each label's tuned threshold with its validation P / R / F1 and support; `--write` stores them."""
    import os
    import warnings

    from transformers.utils import logging

    from .bulk import parse_data_options
    from .export import is_export_folder, write_export_thresholds
    from .metrics import THRESHOLDED_FIGURES as FIGURES
    from .scoring import calibrate_model_folder
    from .storage import check_folder_writable
    from .thresholds import tuned_on, write_thresholds

    logging.disable_progress_bar()  # the weights load in a moment; scoring the split has its own progress bar

    options = parse_data_options(args.data_option)  # a malformed item: `main` refuses it in one line
    if args.write and os.path.isdir(args.model_dir):
        check_folder_writable(args.model_dir)  # a read-only folder is refused before the split is scored
    # A bad folder, dataset, option, split, label set or criterion: `main` refuses it in one line.
    with warnings.catch_warnings():  # labels without validation positives: the table names them
        warnings.filterwarnings("ignore", message=r".*without any positive image", category=UserWarning)
        calibration, figures = calibrate_model_folder(
            args.model_dir,
            args.data,
            options,
            args.split,
            args.criterion,
            args.min_positives,
            args.batch_size,
            args.allow_overlap,
        )
    write = write_export_thresholds if is_export_folder(args.model_dir) else write_thresholds  # an export: its scores
    written = write(args.model_dir, calibration) if args.write else None
    print(calibration.table())
    print(f"tuned on {tuned_on(calibration.provenance())}")
    print(f"\n{args.split} split (calibrated thresholds tuned on it, hence optimistic):")
    print(f"{'thresholds':<12}" + "".join(f"{name:>8}" for name in FIGURES))
    for name, label in (("default", f"{figures['default_threshold']}"), ("calibrated", "calibrated")):
        cells = ("-" if figures[name][key] is None else f"{figures[name][key]:.2f}" for key in FIGURES)
        print(f"{label:<12}" + "".join(f"{cell:>8}" for cell in cells))
    print(
        f"\nthresholds written to {written}"
        if written
        else "\nnothing written (pass --write to store them in config.json)"
    )
    return 0


def card_options(args: argparse.Namespace):
    """The `CardOptions` of the command line; an option left out keeps the `CardOptions` default."""
    from .hub import CardOptions

    given = {"license": args.license, "datasets": args.datasets, "base_model": args.base_model, "tags": args.tags}
    return CardOptions(**{name: value for name, value in given.items() if value is not None})


def run_publish(args: argparse.Namespace) -> int:
    """Writes the Hub folder of MODEL_DIR and pushes it in one commit (or only writes it, with --dry-run); with
    --space, then the Space that demos it (with --dry-run, the two folders are OUT_DIR/model and OUT_DIR/space)."""
    import os

    from huggingface_hub.utils import validate_repo_id

    from .hub import publish

    dry_run, space_dry_run = args.dry_run, None
    if args.space and args.dry_run:  # both folders: OUT_DIR/model and OUT_DIR/space
        dry_run, space_dry_run = os.path.join(args.dry_run, "model"), os.path.join(args.dry_run, "space")
    card = card_options(args)
    # A bad folder, metrics file, image, repository id, token, or a Hub error: `main` refuses it in one line.
    if args.space:
        validate_repo_id(args.space)  # a bad Space id fails before the model is pushed
    result = publish(
        args.model_dir,
        args.repo_id,
        private=args.private,
        dry_run_dir=dry_run,
        token=args.token,
        commit_message=args.commit_message,
        metrics=args.metrics,
        example_image=args.example_image,
        card=card,
    )
    report_publish(args.repo_id, result, args.dry_run)
    if args.space:
        from .space import publish_space

        result = publish_space(
            args.space,
            args.repo_id,
            private=args.private,
            dry_run_dir=space_dry_run,
            token=args.token,
            commit_message=args.commit_message,
            requirement=args.space_requirement,
            license=card.license,
        )
        report_publish(args.space, result, args.dry_run)
    return 0


def report_publish(repo_id: str, result, dry_run: str | None) -> None:
    """Prints the commit of a push, or the files a dry run wrote (`result` is then the folder)."""
    from .hub import hub_folder_files

    if dry_run:
        print(f"dry run, nothing pushed: one commit to {repo_id} would upload the files of {result}:")
        for name in hub_folder_files(result):
            print(f"  {name:<28} {(result / name).stat().st_size:>12,} bytes")
    else:
        print(f"published {repo_id} in one commit: {result.commit_url}")


def run_demo(args: argparse.Namespace) -> int:
    """Serves the demo page of MODEL until interrupted; exit status 2 if the model, the port or Gradio is missing."""
    import os

    from .images import ImageError
    from .model_folder import check_model_folder, is_local_model, remote_code_refusal

    try:
        from .app import build_app
    except ImportError as error:
        print(
            f"srn-hf demo: error: {error.name or error}: the demo needs the app extra: pip install 'srn_hf[app]'",
            file=sys.stderr,
        )
        return 2
    if args.model.startswith((".", "/", "~")) or args.model.count("/") > 1:  # a folder, not a Hub id
        if not os.path.isdir(os.path.expanduser(args.model)):
            print(f"srn-hf demo: error: {args.model}: no such model folder", file=sys.stderr)
            return 2
    model, trust = os.path.expanduser(args.model), args.trust_remote_code
    if is_local_model(model):  # truncated weights, a bad config value, the folder's own code: `main` names them
        check_model_folder(model, trust_remote_code=trust)
    try:
        demo = build_app(model, device=args.device, fast=args.fast, examples=args.examples, trust_remote_code=trust)
    except ImageError as error:
        print(f"srn-hf demo: error: --example {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        refusal = remote_code_refusal(args.model, error)
        if refusal:
            raise refusal from None
        print(f"srn-hf demo: error: {args.model}: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 2
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True
        )
    except OSError:  # Gradio's message names its own launch() arguments
        print(
            f"srn-hf demo: error: {args.host}:{args.port}: cannot serve there (the port is taken, or the address "
            "is not this machine's); choose another --port or --host",
            file=sys.stderr,
        )
        return 2
    public = f" and {demo.share_url}" if demo.share_url else ""
    print(f"srn-hf demo: serving {args.model} at {demo.local_url}{public} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0


def quiet_broken_pipe() -> int:
    """After the reader of stdout has gone: stdout pointed at /dev/null, so that Python's last flush at exit does
    not fail again; returns 141, the status of a process ended by SIGPIPE (128 + 13), as a shell reports it."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


# Errors that mean bad input (a file, a folder, a value, the Hub refusing): a one-line refusal with exit status 2.
REFUSALS = (ValueError, OSError, LookupError)


def main(argv: list[str] | None = None) -> int:
    """Runs one command. An error it raises is printed as one line on stderr, `srn-hf COMMAND: error: ...` (the Python
    parameters it names written as the command's flags, [`flag_worded`]), with exit status 2 for bad input
    (`REFUSALS`, and the strict config checks of transformers) and 1 for anything else; `--debug` shows the
    traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        from . import register

        register()  # SRN's Auto classes, pipeline task and timm entries (the console script imports them only now)
        return args.run(args)
    except KeyboardInterrupt:
        print(f"srn-hf {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed by its reader (`| head`): stop quietly, as Unix tools do
        return quiet_broken_pipe()
    except Exception as error:
        if getattr(args, "debug", False):
            raise
        from .model_folder import one_line

        refused = isinstance(error, REFUSALS) or type(error).__name__.startswith("StrictDataclass")
        hint = "" if refused else f" ({type(error).__name__}; run with --debug for the traceback)"
        message = command_line_message(args.command, error, one_line(error))  # the library names its parameters
        print(f"srn-hf {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2 if refused else 1


if __name__ == "__main__":
    sys.exit(main())
