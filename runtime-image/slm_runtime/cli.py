"""`slm-runtime`: the runtime image's one command, with `serve` and `pull` subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
# they are imported lazily so `pull` never loads an inference engine and `serve` never loads
# the download clients.
SUBCOMMANDS = {
    "serve": ("slm_runtime.server", "Serve the Ollama and OpenAI APIs for one model."),
    "pull": ("slm_runtime.pull", "Fetch and verify a model into a directory."),
    "gateway": (
        "slm_runtime.gateway.server",
        "Serve every LocalModel of the cluster behind one OpenAI and Ollama endpoint.",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="slm-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported.
        if args_list[:1] == [name]:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sub_parser)
    args = parser.parse_args(args_list)
    return int(modules[args.command].run(args))


if __name__ == "__main__":
    sys.exit(main())
