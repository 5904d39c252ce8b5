"""The `mnistlab` command: one subcommand per module, errors a user can cause on one line."""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from mnistlab import __version__
from mnistlab.errors import UserError

# name -> (module, one-line help). Each module defines `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "data": ("mnistlab.cli.data", "prepare, verify and summarize a dataset"),
    "models": ("mnistlab.cli.models", "list the models with their parameter counts per layer"),
    "train": ("mnistlab.cli.train", "train one model and write its run directory"),
    "compare": ("mnistlab.cli.compare", "the study: LeNet-5 against the MLPs and the regularization ablation"),
    "evaluate": ("mnistlab.cli.evaluate", "test a checkpoint: accuracy, per-class accuracy, confusion matrix"),
    "predict": ("mnistlab.cli.predict", "predict the digit in PNG or JPEG files with a trained model"),
    "export": (
        "mnistlab.cli.export",
        "write a trained model as one ONNX file, checked by ONNX Runtime on the test set",
    ),
    "serve": ("mnistlab.cli.serve", "a local web page: draw a digit and watch the models answer"),
    "site": ("mnistlab.cli.site", "the draw-a-digit page as a static folder: open it from disk or put it on any host"),
    "bench": (
        "mnistlab.cli.bench",
        "time mnistlab's engine against the usual DataLoader pipeline; write benchmarks/RESULTS.md",
    ),
}


DESCRIPTION = (
    "LeNet-5 against a multi-layer perceptron on MNIST, and what batch norm, dropout and data "
    "augmentation do to LeNet-5. Start with `mnistlab compare` (the whole study) or "
    "`mnistlab train --model lenet5`."
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to each flag's help, unless the help already says its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(argv: list[str]) -> Parser:
    """The parser; only the chosen command's module is imported, so `--help` stays quick."""
    parser = Parser(prog="mnistlab", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a closed stdout (`mnistlab models | head -1`) ends it quietly with status 141."""
    try:
        try:
            return run_command(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # a reader that has gone shows here, rather than at interpreter exit
    except BrokenPipeError:
        if not stdout_is_closed():
            raise  # another pipe broke: a bug to see, not a reader that stopped reading
        discard_stdout()
        return 141  # what the shell reports for any program stopped by SIGPIPE: 128 + 13


def run_command(argv: list[str]) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"mnistlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mnistlab {args.command}: interrupted", file=sys.stderr)
        return 130


def stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone: poll() reports an error or hang-up on it."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # no file behind stdout, so the pipe that broke was another one
    if not hasattr(select, "poll"):
        return True  # no way to tell (Windows): assume the usual cause
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def discard_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so the unwritten rest fails nowhere at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
