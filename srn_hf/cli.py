"""The `srn-hf` command: `srn-hf predict ...` and `srn-hf publish ...`."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="label images with an SRN model; optionally save attention maps")
    # PREDICT ARGUMENTS (issue 3)
    predict.set_defaults(run=run_predict)

    publish = commands.add_parser("publish", help="write a Hub-ready folder of a trained model and push it")
    # PUBLISH ARGUMENTS (issue 6)
    publish.set_defaults(run=run_publish)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    raise NotImplementedError("issue 3")


def run_publish(args: argparse.Namespace) -> int:
    raise NotImplementedError("issue 6")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
