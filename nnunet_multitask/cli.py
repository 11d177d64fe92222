"""``nnunet-multitask <command> ...``: one entry point for the package's tools.

Each command is a module-level ``main(argv)`` in the module that owns the work; this file only
dispatches, so importing it stays cheap (torch and nnU-Net load only for the command that runs).
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synthesize": ("nnunet_multitask.synthetic", "main", "write the built-in synthetic dataset in the raw layout"),
    "convert": ("nnunet_multitask.conversion", "main", "raw layout -> nnUNet_raw/DatasetXXX_Name"),
    "trainer-path": ("nnunet_multitask.trainer", "print_trainer_folder", "print the folder to put in nnUNet_extTrainer"),
    "install-plans": ("nnunet_multitask.plans", "main", "install a committed plans file into nnUNet_preprocessed"),
    "predict": ("nnunet_multitask.predictor", "main", "same as nnUNetv2_predict_multitask"),
    "merge-subtypes": ("nnunet_multitask.subtype_tables", "main", "merge the subtype CSVs of -num_parts runs"),
    "evaluate": ("nnunet_multitask.plots", "main", "metrics, figures and report for a prediction folder"),
    "check-submission": ("nnunet_multitask.submission", "main", "verify a test-set output folder"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: nnunet-multitask <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"nnunet-multitask: unknown command '{argv[0]}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[argv[0]]
    command = getattr(importlib.import_module(module_name), function)
    return command(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
