"""The options of `train` and `eval` as the command line spells them: what a task declares it honours.

A task object lists the options it honours (`honours`); `dccnext_cli.tasks.check_options` refuses any other
option given, so a new option must be placed here, and honoured or refused by every task, before it can be used
(tests/training/test_task_options.py walks every pair). Plain strings: naming them imports nothing.
"""

from __future__ import annotations

__all__ = ["TRAIN_OPTIONS", "EVAL_OPTIONS"]

TRAIN_OPTIONS = frozenset({
    "--variant", "--data", "--recipe", "--set", "--epochs", "--batch-size", "--lr", "--res", "--grad-accum",
    "--workers", "--seed", "--amp", "--compile", "--grad-checkpointing", "--checkpoint-every", "--output", "--resume",
    "--overwrite", "--task", "--weights", "--json"})
EVAL_OPTIONS = frozenset({"--weights", "--data", "--split", "--batch-size", "--workers", "--limit", "--task",
                          "--precision", "--json"})
