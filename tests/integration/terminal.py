"""A command on a pseudo-terminal, as a person at a shell runs it, and what stays on screen."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path


class Terminal:
    """`argv` with stdin, stdout and stderr on a 120x40 pseudo-terminal, in its own process
    group (so `interrupt` reaches every process it starts, as a terminal's Ctrl-C does)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=follower,
            stdout=follower,
            stderr=follower,
            start_new_session=True,
        )
        os.close(follower)
        self._leader = leader
        self._received = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            if not select.select([self._leader], [], [], 1.0)[0]:
                if self.process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                return
            if not chunk:
                return
            with self._lock:
                self._received += chunk

    @property
    def received(self) -> str:
        """Everything the terminal got so far, escape sequences included."""
        with self._lock:
            return self._received.decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        """Until `text` appears; fails with the last output if the command ends or time is up."""
        deadline = time.monotonic() + timeout
        while text not in self.received:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.received[-4000:]}")
            time.sleep(0.5)

    def interrupt(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """The exit code, once the command and the terminal reader are done."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=10)
        os.close(self._leader)


def run_on_terminal(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> tuple[int, str]:
    """Run `argv` to its end on a terminal; its exit code and everything the terminal got."""
    terminal = Terminal(argv, cwd, env)
    try:
        return terminal.wait(timeout), terminal.received
    finally:
        terminal.close()


def screen(received: str) -> list[str]:
    """The lines left on screen: carriage returns rewrite, ESC[K clears, colours dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", received)
    lines, column = [""], 0
    for token in re.findall(r"\x1b\[K|\r|\n|[^\r\n\x1b]+|\x1b", text):
        if token == "\x1b[K":
            lines[-1] = lines[-1][:column]
        elif token == "\r":
            column = 0
        elif token == "\n":
            lines.append("")
            column = 0
        else:
            line = lines[-1]
            lines[-1] = line[:column] + token + line[column + len(token) :]
            column += len(token)
    return lines
