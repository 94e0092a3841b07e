"""Short model names the benchmarks take on their command lines (any preset name works too)."""

PRESETS = {"lite0": "tf_efficientdet_lite0", "d0": "tf_efficientdet_d0"}
