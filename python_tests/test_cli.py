"""The command lines: their output, and one clear message with exit status 2 on bad input."""

import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_count_json_reproduces_mobilenet_v2():
    result = run("fna_ext.count", "--task", "classification", "--arch", "mobilenet_v2",
                 "--input-size", "224", "224", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"] == 3_504_872 and round(report["madds"] / 1e6, 2) == 300.78
    assert report["task"] == "classification"


def test_count_table_and_inline_net_config(tmp_path):
    result = run("fna_ext.count", "--arch", "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e6', 'skip'], 2]",
                 "--input-size", "64", "64", "--num-classes", "10")
    assert result.returncode == 0, result.stderr
    assert "stages.1" in result.stdout and "total" in result.stdout


def test_count_reads_an_arch_file(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text('{"net_config": "[[32, 16], [\'k3_e1\'], 1]", "task": "coco"}')
    result = run("fna_ext.count", "--arch", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["arch"] == "[[32, 16], ['k3_e1'], 1]"


@pytest.mark.parametrize("args, message", [
    (["--arch", "[[32, 16], ['k4_e6'], 1]"], "stage 0"),
    (["--arch", "no_such_net"], "--arch 'no_such_net' is neither a file"),
    (["--input-size", "0", "10"], "input_size"),
    (["--num-classes", "0"], "--num-classes must be positive"),
    (["--task", "tetris"], "invalid choice"),
])
def test_count_bad_input_exits_2_without_traceback(args, message):
    result = run("fna_ext.count", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_diverged_run_is_one_error_line_and_exit_2(capsys):
    import pytest

    from fna_ext import cli

    def diverges(argv):
        raise FloatingPointError("the loss became nan at iteration 9; lower optimizer.lr or raise the warm-up; "
                                 "the last good checkpoint, out/checkpoint.pt (iteration 8), is kept")
    with pytest.raises(SystemExit) as stop:
        cli.run(diverges, [])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the loss became nan") and "checkpoint.pt" in err[0]
