"""Prints this worker's environment as one JSON line, and writes it to $ENV_DUMP_DIR/rank<R>.json
when that is set (torchrun interleaves its workers' stdout, so the test reads files for it)."""

import json
import os
from pathlib import Path

text = json.dumps(dict(os.environ), sort_keys=True)
if os.environ.get("ENV_DUMP_DIR"):
    Path(os.environ["ENV_DUMP_DIR"], f"rank{os.environ['RANK']}.json").write_text(text)
print("ENV " + text, flush=True)
