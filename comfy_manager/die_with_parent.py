"""Runs a program that the kernel kills when the process that started it dies (Linux PR_SET_PDEATHSIG).

    python die_with_parent.py PARENT_PID PROGRAM [ARGS...]

Sets the parent-death signal to SIGKILL, checks that PARENT_PID is still the parent (it could have died
before the signal was set), then replaces itself with PROGRAM (execv keeps the pid and the death signal).
Standard library only: any Python runs it. Where prctl is missing (not Linux) the program runs without it.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, program = int(sys.argv[1]), sys.argv[2:]
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        prctl = None
    if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        sys.exit(f"die_with_parent: prctl failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        sys.exit("die_with_parent: the parent process is gone; not starting")
    try:
        os.execv(program[0], program)
    except OSError as exc:
        sys.exit(f"die_with_parent: cannot run {program[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
