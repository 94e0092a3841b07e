"""Prints this worker's environment as one JSON line."""
import json
import os

print("ENV " + json.dumps(dict(os.environ), sort_keys=True), flush=True)
