"""``python -m pastflow.launch --nproc-per-node=N pretrain ...``: ``pastflow`` on N processes
of this host through torchrun, keeping the trainer's resumable exit status.

torchrun replaces a worker's exit status with its own (1 when a worker fails), so a
pretraining stopped by a signal after saving its checkpoint (:data:`~pastflow.models.train.
EXIT_PREEMPTED`, 75: "run again to resume", which Snakemake retries) would read as a crash.
The workers touch a marker file (its path in ``PASTFLOW_PREEMPTED_FILE``) once that
checkpoint is saved; this wrapper then exits 75 where torchrun failed, and with torchrun's
own status otherwise.

Signals: Slurm signals every process of the job step (its warning before the time limit, then
SIGTERM), a terminal or ``kill -- -PGID`` only the launcher's process group; torchrun starts
each worker in a session of its own, which a group's signal does not reach. So this process
forwards SIGTERM, SIGUSR1 and SIGURG to every worker's session (the workers act on them:
:data:`~pastflow.models.train.STOP_SIGNALS`; a second copy of one changes nothing). torchrun
has no handler for SIGUSR1 and would die of it, orphaning the workers, so it starts with
SIGUSR1 and SIGURG ignored (kept through exec; the workers install their own handler); on
SIGTERM and SIGINT it stops its workers itself (SIGKILL after 30 s). This process waits for
torchrun, which waits for its workers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PREEMPTED_ENV = "PASTFLOW_PREEMPTED_FILE"
# The rule's `gpu` resource, set by the workflow's launcher (pastflow.rule_commands) and read
# by pastflow.models.device: a job given GPUs fails without CUDA.
GPUS_ENV = "PASTFLOW_GPUS"
# EX_TEMPFAIL, "try again later": pretraining stopped by a signal with its checkpoint saved
# (pastflow.models.train re-exports it; defined here, where no torch is imported).
EXIT_PREEMPTED = 75
# Ignored by torchrun (inherited through exec): it has no handler for them.
IGNORED_BY_TORCHRUN = (signal.SIGUSR1, signal.SIGURG)
# Forwarded to the workers: the stop signals of pastflow.models.train.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)


def mark_preempted() -> None:
    """In a worker: record that this run stopped on a signal with its checkpoint saved (a
    no-op outside :func:`main`)."""
    path = os.environ.get(PREEMPTED_ENV)
    if path:
        Path(path).touch()


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """torchrun of this interpreter (not a ``torchrun`` from ``PATH``): ``nproc`` processes
    of ``python -m pastflow ARGS``, rendezvous on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={int(nproc)}", "-m", "pastflow", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run :func:`torchrun_command` and return the exit status described above."""
    with tempfile.TemporaryDirectory(prefix="pastflow-launch-") as folder:
        marker = Path(folder) / "preempted"
        env = dict(os.environ, **{PREEMPTED_ENV: str(marker)})
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in IGNORED_BY_TORCHRUN}
        try:
            process = subprocess.Popen(torchrun_command(nproc, args), env=env)

            def forward(signum, frame):
                for worker in children(process.pid):
                    signal_session(worker, signum)

            # SIGINT: torchrun stops its workers itself (a terminal signals its group).
            handlers = {**{s: forward for s in FORWARDED}, signal.SIGINT: signal.SIG_IGN}
            for s, handler in handlers.items():
                previous.setdefault(s, signal.signal(s, handler))  # keep the first, to restore
            status = process.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if status != 0 and marker.exists():
            return EXIT_PREEMPTED
        return status if status >= 0 else 128 - status  # killed by a signal: as a shell says


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``; none where it is absent)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid ...": the command may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def signal_session(pid: int, signum: int) -> None:
    """``signum`` to the process group ``pid`` leads (a torchrun worker and its loader
    workers), or to ``pid`` alone when it leads none."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # ended meanwhile
    except PermissionError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pastflow.launch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, required=True,
                        help="processes (one per GPU)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the pastflow command and flags")
    options = parser.parse_args(argv)
    if options.nproc_per_node < 1 or not options.args:
        parser.error("give --nproc-per-node >= 1 and a pastflow command")
    return launch(options.nproc_per_node, options.args)


if __name__ == "__main__":
    sys.exit(main())
