"""The commands and Python snippets of README.md and docs/*.md, as test_docs.py runs them.

A snippet is a fenced ```bash or ```python block, or an inline `python ...` span of the prose.
Bash blocks become commands: backslash continuations joined, comments dropped, `&&` chains split.
Blocks without a language (screens, layouts, sample output) are not code and are left alone.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# An inline command: `python` followed by a script or `-m module` (not a bare word "python").
_INLINE = re.compile(r"`(python (?:-m )?[\w./-]+[^`]*)`")


@dataclass(frozen=True)
class Snippet:
    file: str  # "docs/training.md"
    line: int  # of its first line of code
    lang: str  # "bash" or "python"
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    block: str  # the `where` of its whole block: commands of one block may belong together

    def __str__(self) -> str:
        return shlex.join(self.argv)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def snippets() -> list[Snippet]:
    found = []
    for path in DOC_FILES:
        text, name = path.read_text(), str(path.relative_to(REPO))
        fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
        for m in _FENCE.finditer(text):
            lang = {"sh": "bash", "shell": "bash"}.get(m.group(1), m.group(1))
            if lang in ("bash", "python"):
                found.append(Snippet(name, _line_of(text, m.start()) + 1, lang, m.group(2)))
        for m in _INLINE.finditer(text):
            if not any(a <= m.start() < b for a, b in fenced):
                found.append(Snippet(name, _line_of(text, m.start()), "bash", m.group(1)))
    return found


def commands(snippet: Snippet) -> list[Command]:
    """The shell commands of a bash snippet, each as its argument vector (no shell expansion)."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(snippet.text.splitlines()):
        if not pending:
            start = snippet.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        tokens, pending = shlex.split(pending + line, comments=True), ""
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(Command(f"{snippet.file}:{start}", tuple(tokens[:cut]), snippet.where))
            tokens = tokens[cut + 1 :]
    return out


def python_blocks() -> dict[str, list[Snippet]]:
    """Python snippets per file, in order: a file's snippets run as one session, like a notebook
    (a later block may use names an earlier one defined)."""
    per_file: dict[str, list[Snippet]] = {}
    for snippet in snippets():
        if snippet.lang == "python":
            per_file.setdefault(snippet.file, []).append(snippet)
    return per_file


def shell_commands() -> list[Command]:
    return [c for s in snippets() if s.lang == "bash" for c in commands(s)]
