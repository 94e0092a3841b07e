"""The dashboard: every field at 80 and 160 columns without a line over the width; plain lines
off a terminal; the end summary says where the best weights are and what to run next."""

import time

import pytest
from rich.console import Console

from detlite.dashboard import Dashboard
from detlite.dashboard_view import DashState, render, sparkline, summary_lines


def _state() -> DashState:
    state = DashState(total_steps=400, start_step=0, step=120, epoch=1.87, status="training")
    state.header = {
        "run": "runs/builtin-with-a-rather-long-name/" + "x" * 120,
        "model": "tf_efficientdet_lite0 at (256, 256), 5 classes, 3.19 M parameters",
        "data": "512 train / 128 val images, global batch 8",
        "device": "cpu × 1, fp32, compile off",
    }
    for i in range(30):
        state.add_losses({"loss": 4.0 - i * 0.05, "cls_loss": 1.0, "box_loss": 0.05})
    now = time.monotonic()
    for i in range(20):
        state.add_throughput(8, 0.1, now - 20 + i)
    state.lr, state.rss_gb = 0.025, 1.23
    state.last_eval, state.eval_step = {"AP": 0.2471, "AP50": 0.624, "AP75": 0.1}, 100
    state.best = (0.2471, 100)
    state.checkpoint = (100, now - 65)
    state.warnings = {"boxes over --data.max-boxes": 3, "unreadable images": 0}
    return state


@pytest.mark.parametrize("width", [80, 160])
def test_every_field_fits_the_width(width):
    console = Console(record=True, width=width, color_system=None)
    console.print(render(_state(), width))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    for field in ("run", "model", "progress", "120/400", "ETA", "loss", "img/s", "waiting",
                  "lr", "RSS 1.23 GB", "AP 0.2471", "AP50 0.6240", "best 0.2471 @ 100",
                  "checkpoint", "step 100, 1:05 ago", "boxes over --data.max-boxes 3"):  # fmt: skip
        assert field in text, (field, text)
    assert "unreadable images" not in text  # counters at zero stay out of the way
    assert "8.0 img/s" in text and "10% waiting for data" in text  # 8 images and 0.1 s a second


def test_evaluation_has_its_own_progress():
    state = _state()
    state.eval_progress = (3, 16, time.monotonic() - 1.0)
    console = Console(record=True, width=80, color_system=None)
    console.print(render(state, 80))
    assert "evaluating: batch 3/16" in console.export_text()


def test_sparkline_follows_the_values():
    assert sparkline([1, 2, 3]) == "▁▄█" and sparkline([3, 1]) == "█▁" and sparkline([5]) == ""


def test_plain_lines_off_a_terminal_and_the_summary(tmp_path, capsys):
    dash = Dashboard(tmp_path, total_steps=4, start_step=0, enabled=True)
    assert not dash.interactive  # pytest captures stdout: not a terminal
    record = {"loss": 1.5, "cls_loss": 1.0, "box_loss": 0.01, "lr": 0.01, "img_per_s": 3.0,
              "data_wait": 0.0, "epoch": 0.5}  # fmt: skip
    dash.step(2, record)
    dash.record({"step": 2, "eval": {"AP": 0.3, "AP50": 0.5, "AP75": 0.2}})
    (tmp_path / "best.safetensors").write_bytes(b"x")
    dash.close(tmp_path)
    out = capsys.readouterr().out
    assert "step 2/4  loss 1.5000" in out
    assert f"best AP 0.3000 at step 2: {tmp_path / 'best.safetensors'}" in out
    assert f"python eval.py {tmp_path / 'best.safetensors'}" in out
    assert f"python train.py --resume {tmp_path}" in out
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_other_ranks_print_nothing(tmp_path, capsys):
    dash = Dashboard(tmp_path, total_steps=4, start_step=0, enabled=False)
    dash.log("hello")
    dash.close(tmp_path)
    assert capsys.readouterr().out == "" and not (tmp_path / "metrics.jsonl").exists()


def test_summary_without_an_evaluation():
    state = DashState(step=5, total_steps=5)
    lines = summary_lines(state, "r/best.safetensors", "r")
    assert "final weights: r/best.safetensors" in lines


def test_a_narrowed_terminal_gets_one_clean_redraw(tmp_path):
    """Narrowing re-wraps the frame on screen: the dashboard clears the screen once, and the
    frames after that fit the new width."""
    import io
    import re

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    dash = Dashboard(tmp_path, total_steps=10, start_step=0, enabled=True, console=console)
    try:
        dash.advance(1, 0.1, images=8)
        dash._live.refresh()
        assert "\x1b[2J" not in out.getvalue()
        console.width = 72
        dash.advance(2, 0.2, images=8)
        dash._live.refresh()
        dash.advance(3, 0.3, images=8)  # still 72 columns: no second clear
    finally:
        dash.close()
    text = out.getvalue()
    assert text.count("\x1b[2J") == 1
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.split("\x1b[2J")[1])
    assert "2/10" in after and max(len(line) for line in after.splitlines()) <= 72


def test_the_summary_and_step_lines_report_the_data_wait_share(tmp_path, capsys):
    state = DashState(step=5, total_steps=5, started=time.monotonic() - 10.0)
    state.add_throughput(8, 0.0, time.monotonic())
    state.add_throughput(8, 2.0, time.monotonic())  # 2 s of the run's ~10 s spent waiting
    assert "(20% of it waiting for data)" in summary_lines(state, None, "r")[0]
    dash = Dashboard(tmp_path, total_steps=4, start_step=0, enabled=True)
    record = {"loss": 1.5, "cls_loss": 1.0, "box_loss": 0.01, "lr": 0.01, "img_per_s": 3.0,
              "data_wait": 0.25, "epoch": 0.5}  # fmt: skip
    dash.step(2, record)
    dash.close(tmp_path)
    assert "3.0 img/s  data wait 25%" in capsys.readouterr().out


def test_the_trainer_window_measures_the_share_of_time_spent_waiting(monkeypatch):
    from detlite import trainer

    clock = iter([100.0, 104.0, 110.0])
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
    window = trainer._Window()  # starts at 100 s
    window.add(8, 0, 1.0)
    window.add(8, 0, 0.0)
    assert window.rates() == (4.0, 0.25)  # 16 images and 1 s waited in 4 s
    window.add(4, 0, 0.0)
    assert window.rates() == (4 / 6, 0.0)  # a new window: 4 images in 6 s, no wait
