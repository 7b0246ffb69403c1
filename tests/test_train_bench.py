"""``mammo bench-train``: the real training step of a backbone, timed."""

import json

from mammo.pipelines.cli import main as cli_main


def test_bench_train_times_real_steps_and_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench-train", "--backbone", "tinycnn", "--image-size", "32", "--batch", "4", "--steps", "2",
                     "--warmup", "1", "--set", "train.input_size=32", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert (result["backbone"], result["image_size"], result["input_size"], result["steps"]) == ("tinycnn", 32, 32, 2)
    assert result["global_batch_size"] == 4 and result["device"] == "CPU" and result["params"] > 1000
    assert result["images_per_second"] > 0 and 0 <= result["input_wait_share"] <= 1
    assert result["step_time_ms"] > 0 and result["peak_accelerator_mb"] is None
    table = capsys.readouterr().out
    assert "| backbone | patch -> input |" in table and "| tinycnn | 32 -> 32 | 4 | CPU |" in table
