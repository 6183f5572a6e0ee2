"""What a person watching a run sees within a long epoch: rank 0's step, examples/s and time left, as a line a
minute in a log."""

from __future__ import annotations

import json
import time

from pipeline.loop import StepProgress
from pipeline.progress import EpochPrinter
from pipeline.rundir import RunDir


def test_rank_0_writes_its_step_and_the_driver_prints_it_in_a_log(tmp_path, monkeypatch, capsys) -> None:
    run = RunDir(tmp_path)
    monkeypatch.setattr(StepProgress, "EVERY_S", 0.0)
    progress = StepProgress(run, epoch=2, examples_per_step=100)
    time.sleep(0.2)  # 120 steps in 0.2 s: 380 more take about 0.6 s
    progress(120, 500)
    written = json.loads(run.progress_path.read_text())
    assert (written["epoch"], written["step"], written["steps"]) == (2, 120, 500)
    assert written["examples_per_s"] > 0 and written["seconds_left"] > 0
    monkeypatch.setattr(EpochPrinter, "LOG_EVERY_S", 0.0)
    run.metrics_path.write_text(json.dumps({"epoch": 1, "train/recon_loss": 1.0}) + "\n")
    printer = EpochPrinter(run.metrics_path, total_epochs=10, poll_s=0.05)
    printer._offset = 0
    printer.start()
    time.sleep(0.3)
    printer.stop()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch   1/10")
    assert any(line.startswith("epoch   2/10  step 120/500  ") and "left in this epoch" in line for line in lines)
    run.progress_path.write_text(json.dumps({**written, "epoch": 1}))  # an epoch already printed: nothing new
    printer = EpochPrinter(run.metrics_path, total_epochs=10, poll_s=0.05)
    printer.start()
    time.sleep(0.2)
    printer.stop()
    assert capsys.readouterr().out == ""
