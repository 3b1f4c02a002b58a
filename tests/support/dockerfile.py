"""Dockerfile parsing for the tests: its instructions, what it copies where, and exec-form commands."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """Parse the Dockerfile into instructions, dropping comments and joining continued lines."""
    out: list[Instruction] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return out


def instructions(keyword: str) -> list[str]:
    """The arguments of every instruction with this keyword, in order."""
    return [i.args for i in dockerfile() if i.keyword == keyword]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    out = []
    for ins in dockerfile():
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def copied_to(source: str) -> str:
    """Where the Dockerfile puts one file of the build context."""
    for sources, dest in copies():
        if source in sources:
            return dest
    raise AssertionError(f"the Dockerfile does not copy {source}")


def exec_form(args: str) -> list[str]:
    """The JSON (exec form) command at the end of an ENTRYPOINT/CMD/HEALTHCHECK line."""
    return json.loads(args[args.index("[") :])
