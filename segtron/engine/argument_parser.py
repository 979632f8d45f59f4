"""``default_argument_parser``: the command-line flags of every ``train_net.py``-style script
(Detectron2's, plus ``--dist-timeout`` and the two explicit opt-ins to unsafe loading)."""

import argparse
import os
import sys
from typing import Optional

from segtron.utils.safe_unpickling import UNSAFE_UNPICKLING_ENV

from .launch import DEFAULT_TIMEOUT

__all__ = ["default_argument_parser"]


def _positive_minutes(text: str) -> float:
    """argparse type of ``--dist-timeout``: a number of minutes above 0."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0:
        raise argparse.ArgumentTypeError(
            f"--dist-timeout {text!r}: give the number of minutes (above 0) a process waits for "
            "the others at a collective, e.g. --dist-timeout 10."
        )
    return minutes


class _AllowUnsafeUnpickling(argparse.Action):
    """``--allow-unsafe-unpickling``: store True and set the environment variable that every
    checkpointer reads, in this process and in the processes it starts."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ[UNSAFE_UNPICKLING_ENV] = "1"
        setattr(namespace, self.dest, True)


def _default_epilog(prog: str) -> str:
    return f"""
Examples:

Train on one machine, in one process (CPU or one GPU):
    $ {prog} --config-file cfg.yaml

Train on the 8 GPUs of one machine:
    $ {prog} --num-gpus 8 --config-file cfg.yaml

Override config keys (KEY VALUE pairs after the flags):
    $ {prog} --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001

Evaluate a trained model:
    $ {prog} --config-file cfg.yaml --eval-only MODEL.WEIGHTS /path/to/model_final.pth

Fail within 10 minutes, naming the rank that did not arrive, when a process hangs:
    $ {prog} --num-gpus 8 --dist-timeout 10 --config-file cfg.yaml

Train on two machines (run one command on each; URL = tcp://<IP of machine 0>:<free port>):
    (machine0)$ {prog} --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]
    (machine1)$ {prog} --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]
"""


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of ``train_net.py`` with Detectron2's flags.

    Flags: ``--config-file FILE``, ``--resume``, ``--eval-only``, ``--num-gpus`` (processes per
    machine), ``--num-machines``, ``--machine-rank``, ``--dist-url`` (default ``auto``: a port
    of 127.0.0.1 free when the job starts, so jobs started at once on one machine do not
    collide; Detectron2's default is a fixed port per user), ``--dist-timeout`` (minutes a
    process waits at a collective; default None: the config's ``DIST.TIMEOUT_MINUTES``),
    ``--allow-unsafe-yaml``, ``--allow-unsafe-unpickling`` (explicit opt-ins to loading that
    can run code from the file), and the trailing ``opts``: config overrides as ``KEY VALUE``
    pairs.

    Args:
        epilog: text shown at the end of ``--help``; defaults to usage examples.

    Returns:
        an ``argparse.ArgumentParser``.
    """
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train_net.py"
    parser = argparse.ArgumentParser(
        epilog=epilog if epilog is not None else _default_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="path to the YAML config file")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in OUTPUT_DIR (model, optimizer, "
                             "scheduler, iteration) if there is one; otherwise start from "
                             "MODEL.WEIGHTS. See DefaultTrainer.resume_or_load")
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate MODEL.WEIGHTS (or, with --resume, the last "
                             "checkpoint) on DATASETS.TEST")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="number of processes per machine, one per GPU (CPU processes with "
                             "MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1,
                        help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine, 0 .. "
                             "num-machines - 1)")
    parser.add_argument("--dist-url", default="auto",
                        help="URL where the processes meet to start torch.distributed. The "
                             "default 'auto' takes a port of 127.0.0.1 that is free when the "
                             "job starts (one machine only); with several machines pass "
                             "tcp://<IP of machine 0>:<port>, the same on every machine. See "
                             "https://pytorch.org/docs/stable/distributed.html")
    parser.add_argument("--dist-timeout", type=_positive_minutes, default=None,
                        metavar="MINUTES",
                        help="minutes a process waits for the others at a collective "
                             "(joining, barriers, gradient all-reduce) before the job fails; "
                             "a barrier that times out names the rank(s) that did not arrive "
                             "(gloo). Default: the config's DIST.TIMEOUT_MINUTES "
                             f"({DEFAULT_TIMEOUT.total_seconds() / 60:g} unless set)")
    parser.add_argument("--allow-unsafe-yaml", action="store_true",
                        help="UNSAFE: read --config-file and its _BASE_ files with "
                             "yaml.unsafe_load, so Python tags (!!python/...) in them run "
                             "code. Only for config files you trust")
    parser.add_argument("--allow-unsafe-unpickling", action=_AllowUnsafeUnpickling,
                        help="UNSAFE: load checkpoints and pickles (MODEL.WEIGHTS, --resume, "
                             "proposal files) with full unpickling, which can run code from "
                             f"the file; sets {UNSAFE_UNPICKLING_ENV}=1 for every process. "
                             "Only for files you trust")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides at the end of the command, as space-separated "
                             "KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01 MODEL.DEVICE cpu")
    return parser
