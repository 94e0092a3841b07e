"""`--help` is documentation: every flag has a description, and `train.py --help` shows the
default recipe's flags and the recipes to choose from."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, *args, "--help"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _flag_descriptions(text: str) -> dict[str, str]:
    """{flag: its description without the "(default: ...)" part} from tyro's boxed help."""
    described: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        content = line.strip().strip("│").rstrip()
        start = re.match(r" (--[\w.-]+)", content)
        if start:
            flag = start.group(1)
            parts = re.split(r"\s{2,}", content.strip(), maxsplit=1)
            described[flag] = parts[1] if len(parts) > 1 else ""
        elif flag and content.startswith("   ") and not content.strip().startswith("─"):
            described[flag] += " " + content.strip()
        else:
            flag = None
    return {
        f: re.sub(r"\((default: [^)]*|required)\)", "", d).strip() for f, d in described.items()
    }


@pytest.mark.parametrize(
    "command", [("train.py",), ("train.py", "coco"), ("eval.py",)], ids=" ".join
)
def test_every_flag_has_a_description(command):
    flags = _flag_descriptions(_help(*command))
    assert len(flags) > (6 if command == ("eval.py",) else 40)
    assert [f for f, d in flags.items() if not d] == []


def test_train_help_lists_the_default_recipe_flags_and_the_recipes():
    text = _help("train.py")
    assert "--batch-size" in text and "--model.preset" in text and "--dist.sync-bn" in text
    assert re.search(r"builtin \(default\)", text) and "coco" in text
    assert "(required)" not in text


def test_eval_help_shows_only_evaluation_flags():
    flags = _flag_descriptions(_help("eval.py"))
    assert "--data.val-json" in flags and "--min-score" in flags
    assert not {"--data.train-json", "--optim.lr", "--steps", "--dist.sync-bn"} & set(flags)
