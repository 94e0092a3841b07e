"""The product's shape rules: small files, functions that fit on a screen, thin CLIs, one
implementation per operation."""

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = [*sorted((REPO / "detlite").rglob("*.py")), REPO / "train.py", REPO / "eval.py"]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_file_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in PRODUCT
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert long == {}


def test_no_function_over_60_lines():
    long = [
        f"{p.relative_to(REPO)}:{name} ({n} lines)"
        for p in PRODUCT
        for name, n in _functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_eval_cli_imports_nothing_from_the_trainer():
    code = "import json, sys, eval; print(json.dumps([m for m in sys.modules if 'detlite' in m]))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    assert "detlite.evaluate" in loaded
    assert not {"detlite.trainer", "detlite.run", "detlite.train_config"} & set(loaded)


def test_one_focal_loss_and_one_nms_in_the_product():
    """The detlite:: ops are the only focal-loss and NMS paths; torchvision's NMS and the plain
    focal loss live in tests/oracles.py as references."""
    sources = {p: p.read_text() for p in PRODUCT if "ops" not in p.relative_to(REPO).parts}
    assert [p.name for p, s in sources.items() if "binary_cross_entropy" in s] == []
    assert [p.name for p, s in sources.items() if "torchvision.ops import nms" in s] == []
    assert [p.name for p, s in sources.items() if "DYNAMO_CONFIG" in s] == []
