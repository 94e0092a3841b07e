"""`python -m detlite.export`: pt2 and aoti round trips of the whole predictor (aoti in a
process that imports only torch and the op library), the ONNX network under onnxruntime, the
metadata, the check on write, and one-line refusals of arguments that cannot work."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import named_checkpoint

from detlite import config, ops
from detlite.data import CategoryMap
from detlite.export import ExportCheckError, ExportSpec, example_batch, export, formats
from detlite.export.__main__ import main
from detlite.export.compare import TOLERANCES, dense_agreement, detections_agreement
from detlite.export.modules import network_module, predictor_module

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = CategoryMap(ids=(3, 7, 11), names=("circle", "square", "star"))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """Lite0 at 256 px with 3 named classes (not the preset's 90)."""
    path = tmp_path_factory.mktemp("export") / "lite0.safetensors"
    return named_checkpoint(path, CATEGORIES, image_size=256, seed=3)


def _eager(params, cfg, images, scales):
    with torch.no_grad():
        return predictor_module(params, cfg)(images, scales)


def _check_metadata(meta: dict, fmt: str) -> None:
    assert meta["format"] == fmt
    assert meta["category_ids"] == [3, 7, 11]
    assert meta["category_names"] == ["circle", "square", "star"]
    assert meta["image_size"] == [256, 256]
    assert config.from_dict(meta["model_config"]).num_classes == 3


def test_pt2_round_trip_with_a_dynamic_batch(lite0, tmp_path, capsys):
    path, params, cfg = lite0
    out = tmp_path / "lite0_program.pt2"
    assert main([str(path), str(out), "--format", "pt2", "--batch", "2"]) == 0
    printed = capsys.readouterr().out
    assert "batch dynamic" in printed and "counts equal" in printed
    runner, meta = formats.load_pt2(out)
    _check_metadata(meta, "pt2")
    assert meta["batch"] == "dynamic"
    for batch in (1, 3):  # neither is the batch it was traced with
        images, scales = example_batch(batch, cfg, "cpu")
        agreement = detections_agreement(
            _eager(params, cfg, images, scales), runner(images, scales)
        )
        assert agreement.within("fp32"), agreement.line("fp32")


_FRESH_PROCESS = """
import sys, torch
torch.ops.load_library(sys.argv[1])
from torch._inductor import aoti_load_package
runner = aoti_load_package(sys.argv[2])
images, scales = torch.load(sys.argv[3], weights_only=True)
dets, counts = runner(images, scales)
assert not any(name.split(".")[0] == "detlite" for name in sys.modules), "detlite imported"
torch.save({"dets": dets, "counts": counts, "meta": runner.get_metadata()["detlite"]}, sys.argv[4])
"""


@pytest.fixture(scope="module")
def aoti_package(lite0, tmp_path_factory):
    """The aoti export of `lite0` (minutes: AOTInductor compiles C++)."""
    if ops.library_path() is None:
        pytest.skip(f"the package calls the detlite ops, which need the library ({ops.status()})")
    out = tmp_path_factory.mktemp("aoti") / "lite0.pt2"
    report = export(lite0[0], out, ExportSpec(format="aoti", batch=2))
    assert report.agreement.within("fp32"), report.agreement.line("fp32")
    return out


@pytest.mark.slow
def test_aoti_package_runs_in_a_process_without_detlite(lite0, aoti_package, tmp_path):
    path, params, cfg = lite0
    out = aoti_package
    images, scales = example_batch(3, cfg, "cpu")
    torch.save((images, scales), tmp_path / "inputs.pt")
    script = tmp_path / "run_package.py"
    script.write_text(_FRESH_PROCESS)
    args = [str(ops.library_path()), str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "o.pt")]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "o.pt", weights_only=True)
    agreement = detections_agreement(
        _eager(params, cfg, images, scales), (got["dets"], got["counts"])
    )
    assert agreement.within("fp32"), agreement.line("fp32")
    _check_metadata(json.loads(got["meta"]), "aoti")
    _detector_from_package_matches_checkpoint(path, out)
    _example_matches_detector(path, out, tmp_path)


@pytest.mark.slow
def test_cpp_example_runs_the_package(lite0, aoti_package, tmp_path):
    """examples/cpp, built by CMake against this torch, runs the package from C++."""
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("no cmake or C++ compiler on PATH to build examples/cpp")
    _, params, cfg = lite0
    package = aoti_package
    build = tmp_path / "cpp"
    torch_dir = str(Path(torch.__file__).parent)
    for command in (
        ["cmake", "-S", str(REPO / "examples/cpp"), "-B", str(build), f"-DTORCH_DIR={torch_dir}",
         "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j", "2"],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    images, _ = example_batch(1, cfg, "cpu")
    images[0].numpy().tofile(tmp_path / "image.raw")
    done = subprocess.run(
        [str(build / "run_package"), str(package), str(ops.library_path()),
         str(tmp_path / "image.raw")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rows = torch.tensor([[float(v) for v in line.split()] for line in lines[1:]])
    printed = (rows[None], torch.tensor([int(lines[0])]))
    agreement = detections_agreement(_eager(params, cfg, images, torch.ones(1)), printed)
    # Within the export tolerances plus the rounding of what it prints (4 decimals, 6 of scores).
    assert agreement.counts_equal, agreement.line("fp32")
    assert agreement.max_box_px <= 0.0101 and agreement.max_score <= 1.01e-4, agreement.line("fp32")


_RUN_EXAMPLE = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not any(name.split(".")[0] == "detlite" for name in sys.modules), "detlite imported"
"""


def _example_matches_detector(ckpt, package, tmp_path):
    """examples/run_package.py, in a process without detlite, finds what Detector finds."""
    from PIL import Image

    from detlite import Detector

    picture = tmp_path / "photo.png"
    pixels = torch.randint(0, 256, (180, 320, 3), generator=torch.Generator().manual_seed(5))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(picture)
    example = REPO / "examples" / "run_package.py"
    argv = [str(example), str(package), str(picture), "--library", str(ops.library_path())]
    done = subprocess.run(
        [sys.executable, "-c", _RUN_EXAMPLE, *argv, "--min-score", "0"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    fields = [line.split("\t") for line in done.stdout.strip().splitlines()]
    expected = Detector.from_checkpoint(ckpt, device="cpu").predict(picture, min_score=0.0)
    assert [f[1] for f in fields] and {f[1] for f in fields} <= set(CATEGORIES.names)
    printed = torch.tensor(
        [[*map(float, f[3:7]), float(f[2]), CATEGORIES.names.index(f[1])] for f in fields]
    )
    wanted = torch.cat(
        [
            expected["boxes"],
            expected["scores"][:, None],
            torch.tensor([CATEGORIES.names.index(n) for n in expected["names"]])[:, None],
        ],
        dim=1,
    )
    counts = torch.tensor([len(wanted)]), torch.tensor([len(printed)])
    agreement = detections_agreement((wanted[None], counts[0]), (printed[None], counts[1]))
    # Within the export tolerances plus the rounding of what the example prints (2 decimals of
    # coordinates, 4 of scores).
    assert agreement.counts_equal, agreement.line("fp32")
    assert agreement.max_box_px <= 0.015 and agreement.max_score <= 1.5e-4, agreement.line("fp32")


def _detector_from_package_matches_checkpoint(ckpt, package):
    from detlite import Detector

    pictures = [
        torch.randint(0, 256, size, dtype=torch.uint8) for size in ((3, 90, 300), (1, 400, 200))
    ]
    from_package = Detector.from_package(package).predict(pictures, min_score=0.0)
    from_checkpoint = Detector.from_checkpoint(ckpt, device="cpu").predict(pictures, min_score=0.0)
    for a, b in zip(from_package, from_checkpoint, strict=True):
        assert set(a["names"]) <= set(CATEGORIES.names)
        assert len(a["scores"]) == len(b["scores"])
        assert (a["scores"] - b["scores"]).abs().max() <= TOLERANCES["fp32"][1]


def test_onnx_network_matches_eager_under_onnxruntime(lite0, tmp_path):
    pytest.importorskip("onnxruntime")
    path, params, cfg = lite0
    out = tmp_path / "lite0.onnx"
    report = export(path, out, ExportSpec(format="onnx", batch=2))
    assert report.agreement.within("fp32"), report.agreement.line("fp32")
    _check_metadata(formats.onnx_metadata(out), "onnx")
    session = formats.onnxruntime_session(out)
    assert [o.name for o in session.get_outputs()] == ["scores", "boxes"]
    images, _ = example_batch(3, cfg, "cpu")
    with torch.no_grad():
        eager = network_module(params, cfg)(images)
    got = session.run(None, {"images": images.numpy()})
    assert got[0].shape == (3, eager[0].shape[1], 3) and got[1].shape == (3, eager[0].shape[1], 4)
    agreement = dense_agreement(eager, got)
    assert agreement.within("fp32"), agreement.line("fp32")


def test_an_export_that_disagrees_is_refused_and_not_written(lite0, tmp_path, monkeypatch):
    path, _, _ = lite0
    real_load = formats.load_pt2

    def load_with_an_error(file):
        runner, meta = real_load(file)

        def off(images, scales):
            dets, counts = runner(images, scales)
            return dets + torch.tensor([0.0, 0.0, 0.0, 0.0, 1e-3, 0.0]), counts

        return off, meta

    monkeypatch.setattr(formats, "load_pt2", load_with_an_error)
    out = tmp_path / "bad.pt2"
    with pytest.raises(ExportCheckError, match=r"max score difference 1\.00e-03"):
        export(path, out, ExportSpec(format="pt2"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out.onnx"], "--format aoti writes a .pt2 file"),
        (["out.pt2", "--format", "onnx"], "--format onnx writes a .onnx file"),
        (["exists.pt2"], "exists — choose another name, or pass --overwrite"),
        (["out.pt2", "--batch", "0"], "--batch must be an integer ≥ 1"),
        (["out.onnx", "--format", "onnx", "--dtype", "bf16"], "drop --dtype"),
        (["out.pt2", "--image-size", "64"], "--image-size 64: image_size (64, 64) is smaller"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(lite0, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.pt2").write_bytes(b"earlier work")
    code = main([str(lite0[0]), *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "exists.pt2").read_bytes() == b"earlier work"
    assert not (tmp_path / "out.pt2").exists()


def test_onnx_without_its_packages_is_refused_before_exporting(lite0, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    hidden = {"onnxscript", "onnxruntime"}
    find_spec = lambda name, *a: None if name in hidden else real_find_spec(name, *a)  # noqa: E731
    with mock.patch.object(importlib.util, "find_spec", find_spec):
        code = main([str(lite0[0]), str(tmp_path / "m.onnx"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "needs onnxscript, onnxruntime" in err, err
    assert "pip install onnxscript onnxruntime" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_and_cuda_without_gpu_are_refused(tmp_path, capsys):
    assert main([str(tmp_path / "none.safetensors"), str(tmp_path / "o.pt2")]) == 2
    assert "CKPT" in capsys.readouterr().err
    if not torch.cuda.is_available():
        ckpt = tmp_path / "c.safetensors"
        ckpt.write_bytes(b"x")
        assert main([str(ckpt), str(tmp_path / "o.pt2"), "--device", "cuda"]) == 2
        assert "no usable CUDA device" in capsys.readouterr().err


def _rows(*rows):
    return torch.tensor([rows], dtype=torch.float32), torch.tensor([len(rows)])


def test_comparison_pairs_swapped_rows_and_tolerates_only_cutoff_ties():
    a = [10.0, 10.0, 50.0, 50.0, 0.9, 1.0]
    b = [60.0, 60.0, 90.0, 90.0, 0.9, 1.0]  # the same score: NMS may emit either first
    tie_1 = [0.0, 0.0, 5.0, 5.0, 0.20000, 0.0]
    tie_2 = [100.0, 0.0, 120.0, 5.0, 0.20001, 2.0]  # near-equal to tie_1, for the last place
    swapped = detections_agreement(_rows(a, b, tie_1), _rows(b, a, tie_1))
    assert swapped == detections_agreement(_rows(a, b, tie_1), _rows(a, b, tie_1))
    assert swapped.within("fp32") and swapped.max_box_px == 0 and swapped.cutoff_ties == 0
    at_cutoff = detections_agreement(_rows(a, b, tie_1), _rows(a, b, tie_2))
    assert at_cutoff.within("fp32") and at_cutoff.cutoff_ties == 1
    assert "1 near-equal candidate(s) at the score cutoff" in at_cutoff.line("fp32")
    lost_a_good_one = detections_agreement(_rows(a, b, tie_1), _rows(tie_2, b, tie_1))
    assert not lost_a_good_one.within("fp32") and lost_a_good_one.max_box_px > 10
    moved_a = [10.0, 10.0, 50.02, 50.0, 0.9, 1.0]  # 0.02 px off, well above the cutoff score
    moved = detections_agreement(_rows(a, tie_1), _rows(moved_a, tie_1))
    assert not moved.within("fp32") and abs(moved.max_box_px - 0.02) < 1e-5
