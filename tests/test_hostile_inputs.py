"""Hostile inputs, measured (issue 24): each probe gets a correct result, or one line and
exit status 2 naming the problem (the server: an HTTP 4xx with a JSON error).

Sections: data (logs, pools, costs, model names, deep JSON), the pool server, the grid.
The config parser's cases (the launcher) have their own section below them.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from recal_jax.data.loaders import load_jsonl_dir
from recal_jax.data.schema import MAX_CALL_COST_USD, DataError
from recal_jax.models.tokenizer import EOS_TOKEN, PAD_TOKEN, PROTOCOL_TAGS
from tests.test_run_dir import HOLDER, free_for_others

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCORES = {"small": 0, "mid": 1, "large": 1}
POOL = {"small": {"price_in": 0.1, "price_out": 0.2}, "mid": {"price_in": 0.5, "price_out": 0.5},
        "large": {"price_in": 2, "price_out": 2}}


def _record(i: int, **fields) -> dict:
    return {"id": f"q{i}", "dataset": "math" if i % 2 else "trivia", "question": f"Question number {i}?",
            "golden_answers": [], "scores": dict(SCORES), **fields}


def write_log(root: pathlib.Path, train=None, test=None, pool=None) -> pathlib.Path:
    """A log in the README's "Bring your own log" format: train/test JSONL, no header, pool.json."""
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("test", test)):
        lines = lines if lines is not None else [json.dumps(_record(i)) for i in range(4)]
        (root / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    (root / "pool.json").write_text(pool if pool is not None else json.dumps(POOL))
    return root


def run_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2 and exactly one stderr line, `error: ...`, containing every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# =============================================================================== data

def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_RECORD_LINES = [  # (name, train.jsonl line 3, words the error must contain)
    ("cost 1e300", json.dumps(_record(2, costs={"small": 1e300, "mid": 0.1, "large": 0.1})),
     ["costs['small']", f"at most {MAX_CALL_COST_USD:g} USD per call", "1e+300"]),
    ("cost just past the limit", json.dumps(_record(2, costs={"small": MAX_CALL_COST_USD * 1.01})),
     ["costs['small']", "MAX_CALL_COST_USD"]),
    ("100,000-deep field", json.dumps(_record(2))[:-1] + ', "extra": ' + _deep(100_000) + "}",
     ["invalid JSON", "nested too deeply"]),
    ("5000-digit integer", json.dumps(_record(2))[:-1] + ', "extra": 1' + "0" * 5000 + "}", ["invalid JSON"]),
    ("400-digit score", json.dumps(_record(2)).replace('"small": 0', '"small": 1' + "0" * 400),
     ["scores['small']", "in [0, 1]"]),
]


@pytest.mark.parametrize("name, line, needles", BAD_RECORD_LINES, ids=[c[0] for c in BAD_RECORD_LINES])
def test_bad_record_names_file_and_line(tmp_path, name, line, needles):
    good = [json.dumps(_record(i)) for i in range(4)]
    root = write_log(tmp_path / "log", train=good[:2] + [line] + good[2:])
    with pytest.raises(DataError) as err:
        load_jsonl_dir(root)
    message = str(err.value)
    assert message.startswith(f"{root / 'train.jsonl'}:3: ") and "\n" not in message
    for needle in needles:
        assert needle in message


def test_a_cost_at_the_limit_loads(tmp_path):
    line = json.dumps(_record(2, costs={"small": MAX_CALL_COST_USD}))
    suite = load_jsonl_dir(write_log(tmp_path / "log", train=[json.dumps(_record(0)), line]))
    assert suite.train.call_cost(suite.train.records[1], "small") == MAX_CALL_COST_USD


BAD_POOLS = [  # (pool.json text, words the error must contain)
    (json.dumps({**POOL, "small": {"price_in": 1e300}}), ["model 'small'", "price_in", "USD per 1M tokens"]),
    ('{"small": ' + _deep(100_000) + "}", ["nested too deeply"]),
]


@pytest.mark.parametrize("pool, needles", BAD_POOLS, ids=["price 1e300", "100,000-deep pool"])
def test_bad_pool_names_the_file(tmp_path, pool, needles):
    root = write_log(tmp_path / "log", pool=pool)
    with pytest.raises(DataError) as err:
        load_jsonl_dir(root)
    assert str(err.value).startswith(f"{root / 'pool.json'}: ")
    for needle in needles:
        assert needle in str(err.value)


BAD_NAMES = [*PROTOCOL_TAGS, PAD_TOKEN, EOS_TOKEN, " pad ", "pad ", "\tmid", "two\nlines", "bell\x07",
             "para\u2029graph", "", "x" * 500, "<|im_end|>", "a>b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_model_names_that_cannot_be_routed_to_are_refused(tmp_path, bad):
    """A pool model named like a protocol tag, a special token, with whitespace at its ends or
    a control character is refused with the file and the name, in pool.json and in a header."""
    pool = {bad: POOL["large"], "small": POOL["small"]}
    scores = {bad: 1, "small": 0}
    lines = [json.dumps(_record(i, scores=scores)) for i in range(2)]
    root = write_log(tmp_path / "log", train=lines, test=lines, pool=json.dumps(pool))
    with pytest.raises(DataError) as err:
        load_jsonl_dir(root)
    assert str(err.value).startswith(f"{root / 'pool.json'}: ") and repr(bad)[:40] in str(err.value)
    header = json.dumps({"routing_log": {"models": pool}})
    (root / "pool.json").unlink()
    (root / "train.jsonl").write_text("\n".join([header, *lines]) + "\n")
    with pytest.raises(DataError) as err:
        load_jsonl_dir(root)
    assert str(err.value).startswith(f"{root / 'train.jsonl'}:1 models: ")


def test_a_model_name_with_a_colon_is_routable(tmp_path):
    """':' separates NAME : QUERY, but the parser matches the longest pool name first."""
    from recal_jax.routing.protocol import parse_call

    pool = {"llama3:8b": POOL["small"], "llama3": POOL["large"]}
    lines = [json.dumps(_record(i, scores={"llama3:8b": 1, "llama3": 0})) for i in range(2)]
    suite = load_jsonl_dir(write_log(tmp_path / "log", train=lines, test=lines, pool=json.dumps(pool)))
    names = suite.train.model_names
    assert parse_call("llama3:8b : who?", names) == ("llama3:8b", "who?", "ok")
    assert parse_call("llama3 : who?", names) == ("llama3", "who?", "ok")


# =============================================================================== the pool server

def _post(base_url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def sim_server():
    from recal_jax.data.schema import ModelInfo
    from recal_jax.routing.pools import SimulatedPool
    from recal_jax.routing.server import running_server

    pool = SimulatedPool({"small": ModelInfo("small", 0.5, 1.5)}, {}, default_skill=0.5, seed=0)
    with running_server(pool) as srv:
        yield srv


@pytest.mark.parametrize("text", [5, None], ids=["int text", "null text"])
def test_server_content_part_with_non_string_text_is_a_400(sim_server, text):
    status, reply = _post(sim_server.base_url, {"model": "small", "messages": [
        {"role": "user", "content": [{"type": "text", "text": text}]}]})
    assert status == 400
    assert reply["error"]["type"] == "invalid_request_error" and "'text' must be a string" in reply["error"]["message"]


def test_server_404_does_not_echo_a_100k_model_name(sim_server):
    status, reply = _post(sim_server.base_url, {"model": "z" * 100_000, "messages": [
        {"role": "user", "content": "hi"}]})
    assert status == 404 and reply["error"]["type"] == "model_not_found"
    assert len(json.dumps(reply)) < 300 and "z" * 80 + "..." in reply["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_cli_serves_the_readme_log_format(tmp_path):
    root = write_log(tmp_path / "log")
    question = json.loads((root / "test.jsonl").read_text().splitlines()[0])["question"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recal_jax.routing.server", str(root), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as resp:
                    listed = [m["id"] for m in json.loads(resp.read())["data"]]
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert listed == list(POOL)
        status, reply = _post(base, {"model": "mid", "messages": [{"role": "user", "content": question}]})
        assert status == 200 and reply["model"] == "mid"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_server_cli_bad_log_is_one_line(tmp_path):
    line = json.dumps(_record(1, costs={"small": 1e300}))
    root = write_log(tmp_path / "log", test=[json.dumps(_record(0)), line])
    proc = run_cli("recal_jax.routing.server", str(root), "--port", str(_free_port()), timeout=30)
    assert_one_line_error(proc, f"{root / 'test.jsonl'}:2:", "costs['small']")


# =============================================================================== the grid

GRID = """
import ml_collections

def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/synthetic.py"
    g.suites = ("synthetic",)
    g.presets = ("grpo",)
    g.seeds = (0,)
    g.share_sft = False
    g.overrides = ml_collections.ConfigDict(dict(sft=dict(steps=20), grpo=dict(steps=2, group_size=4)))
    return g
"""


@pytest.fixture
def grid_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "grid.py"
    path.write_text(GRID)
    return path


@pytest.mark.parametrize("flag, needles", [
    ("--grid.seeds=(0,-1)", ["grid.seeds", "-1"]),
    ("--grid.presets=('grpo','ppo')", ["grid.presets", "'ppo'"]),
    ("--grid.overrides.grpo.stepz=3", ["--grid.overrides.grpo.stepz=3", "no field 'stepz'"]),
    ("--grid.overrides.grpo.group_size=1", ["synthetic/grpo-s0", "--config.grpo.group_size=1"]),
], ids=["negative seed", "unknown preset", "unknown override key", "group_size 1"])
def test_grid_bad_flag_is_one_line_before_any_run(tmp_path, grid_file, flag, needles):
    results = tmp_path / "results"
    proc = run_cli("experiments.run_grid", f"--grid={grid_file}", flag, f"--results_dir={results}")
    assert_one_line_error(proc, *needles)
    assert not results.exists()  # no run started


def test_grid_sigterm_stops_its_worker(tmp_path, grid_file):
    from recal_jax.evaluation.run_dir import lock_holder

    results = tmp_path / "results"
    workdir = results / "synthetic" / "grpo-s0"
    grid = subprocess.Popen([sys.executable, "-m", "experiments.run_grid", f"--grid={grid_file}",
                             f"--results_dir={results}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        # the grid takes the lock briefly, then its worker for good (probing earlier could steal it)
        while lock_holder(workdir) in (None, grid.pid):
            assert grid.poll() is None, grid.communicate()
            assert time.monotonic() < deadline, "the worker never took its run directory's lock"
            time.sleep(0.1)
        worker = lock_holder(workdir)
        assert not free_for_others(workdir)
        grid.send_signal(signal.SIGTERM)
        _, err = grid.communicate(timeout=30)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert free_for_others(workdir)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def _gone(pid: int) -> bool:
    """No such process, or a zombie (an orphan's reaping is up to PID 1)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_grid_kills_what_its_worker_started(tmp_path):
    """On a signal the grid kills its worker's whole process group, named by the run lock."""
    from experiments import run_grid

    worker = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    grandchild = int(worker.stdout.readline())
    (tmp_path / ".lock").write_text(f"{worker.pid} on {socket.gethostname()}\n")
    run_grid.kill_worker_group(tmp_path)
    assert worker.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the worker's child survived"
        time.sleep(0.05)
    (tmp_path / ".lock").write_text(f"{os.getpid()} on {socket.gethostname()}\n")
    run_grid.kill_worker_group(tmp_path)  # the grid's own pid (the worker has not locked yet): nothing




def test_grid_never_runs_two_workers_on_one_run_directory(tmp_path, grid_file):
    """A worker that outlived its grid holds the directory: a restarted grid leaves it alone,
    and a worker started there anyway exits with one line in grid_log.txt."""
    from experiments import run_grid
    from recal_jax.evaluation import run_dir

    grid = run_grid.load_config_file(grid_file)
    results = tmp_path / "results"
    workdir = results / "synthetic" / "grpo-s0"
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text('{"step": 0, "phase": "sft"}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run_dir.__file__, str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        calls, lines = [], []
        out = run_grid.run_grid(grid, results, runner=lambda c, w: calls.append(w) or 0, echo=lines.append)
        assert calls == [] and out[0]["status"] == "failed"
        assert "in use by another process" in lines[0] and f"pid {holder.pid} " in lines[0]
        assert (workdir / "metrics.jsonl").exists()  # not touched

        config = run_grid.build_run_config(grid, run_grid.expand_grid(grid)[0], results)
        assert run_grid.subprocess_runner(config, workdir) == 2
    finally:
        holder.kill()
        holder.wait(timeout=10)
    last = (workdir / run_grid.RUN_LOG).read_text().strip().splitlines()[-1]
    assert last.startswith(f"error: run directory {workdir} is in use by another process (pid {holder.pid} ")


# =============================================================================== the config parser (launcher)

TINY_FLAGS = ("--config.tokenizer.vocab_size=400", "--config.model.num_layers=1", "--config.model.hidden_size=32",
              "--config.sft.steps=2", "--config.grpo.steps=2", "--config.grpo.instances_per_step=2",
              "--config.grpo.group_size=2", "--config.eval.batch_size=8", "--no_progress")


def launch(*flags, timeout=180) -> subprocess.CompletedProcess:
    """The launcher as a user runs it: one CPU device (no simulated devices of the test suite)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "launch.main", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flags, needles", [
    (("--config.nope=1",), ("nope",)),
    (("--config=launch/configs/does_not_exist.py",), ("does_not_exist.py",)),
    (("--config.grpo.group_size=1",), ("--config.grpo.group_size=1", "two or more rollouts")),
    (("--config.synthetic.n_train_per_family=0",), ("--config.synthetic.n_train_per_family=0", ">= 1")),
    (("--config.synthetic.n_test_per_family=-3",), ("--config.synthetic.n_test_per_family=-3",)),
    (("--config.mesh.data=64",), ("--config.mesh.data=64", "does not fit")),
    (("--config.tokenizer.vocab_size=100",), ("--config.tokenizer.vocab_size=100", "byte")),
    (("--config.pool.endpoints=/nonexistent/endpoints.json",), ("--config.pool.endpoints", "no such file")),
    (("--config.seed=-1",), ("--config.seed=-1",)),
    (("--config.grpo.group_size=100000",), ("--config.grpo.group_size=100000", "<= 4096")),
    (("--config.grpo.max_total_tokens=100000000",), ("--config.grpo.max_total_tokens=100000000",)),
    (("--config.grpo.max_total_tokens=3000",), ("--config.grpo.max_total_tokens=3000", "context")),
    (("--config.calibration.weights=(1.0,2.0)",), ("--config.calibration.weights", "5 finite numbers")),
    (("--config.pool.kind=telepathy",), ("--config.pool.kind='telepathy'", "unknown pool")),
], ids=lambda v: v[0] if isinstance(v, tuple) and v and v[0].startswith("--") else None)
def test_bad_config_is_one_line_before_any_work(tmp_path, flags, needles):
    workdir = tmp_path / "run"
    assert_one_line_error(launch(*flags, f"--workdir={workdir}"), *needles)
    assert not (workdir / "config.json").exists()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
    file = tmp_path / "file"
    file.write_text("not a directory")
    assert_one_line_error(launch(f"--workdir={file}"), f"--workdir='{file}'", "is a file")
    assert_one_line_error(launch(f"--workdir={file / 'run'}"), "cannot write there")


def test_missing_api_key_variable_is_one_line(tmp_path):
    endpoints = tmp_path / "endpoints.json"
    names = ("tiny-fast", "mid-general", "large-pro", "code-expert", "math-whiz", "fact-base")
    endpoints.write_text(json.dumps({m: {"base_url": "http://127.0.0.1:9/v1", "model": m,
                                         "api_key_env": "RECAL_TEST_KEY_THAT_IS_NOT_SET"} for m in names}))
    proc = launch(f"--config.pool.endpoints={endpoints}", f"--workdir={tmp_path / 'run'}", *TINY_FLAGS)
    assert_one_line_error(proc, "RECAL_TEST_KEY_THAT_IS_NOT_SET", "not set")


README_TRAIN = [  # the README's "Bring your own log" example: 10 score-only records, 3 models
    {"id": f"r{i}", "dataset": "math" if i < 5 else "trivia", "question": f"Question {i} of the README?",
     "golden_answers": [], "scores": {"small": i % 2, "mid": 1, "large": 1}} for i in range(10)]


def test_a_log_smaller_than_the_sft_batch_trains(tmp_path):
    """The README's own-log command on a 10-record log: SFT's batch of 32 adapts (one warning
    line), the run finishes and prints its table."""
    data = write_log(tmp_path / "my_log", train=[json.dumps(r) for r in README_TRAIN],
                     test=[json.dumps({**r, "id": f"t{i}"}) for i, r in enumerate(README_TRAIN[:4])])
    proc = launch("--config=launch/configs/jsonl.py", f"--config.data_dir={data}", f"--workdir={tmp_path / 'run'}",
                  *TINY_FLAGS[:3], "--config.sft.steps=3", "--config.grpo.steps=1", "--no_progress", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sft.batch_size=32 exceeds the 10 demonstrations of this log; using 10" in proc.stderr
    assert "Test split, after 1 GRPO steps" in proc.stdout
    assert (tmp_path / "run" / "summary.json").exists()


def test_a_workdir_holds_one_run(tmp_path):
    """A restart with another preset stops with one line naming the field; --overwrite starts
    afresh; a safe change (grpo.steps) resumes; a failed start leaves config.json alone."""
    workdir = tmp_path / "run"
    first = launch(f"--workdir={workdir}", *TINY_FLAGS, "--config.grpo.stop_at_step=1")
    assert first.returncode == 0, first.stderr[-3000:]
    stored = (workdir / "config.json").read_text()
    other = launch(f"--workdir={workdir}", *TINY_FLAGS, "--config.calibration.preset=grpo",
                   "--config.grpo.learning_rate=0.1")
    assert_one_line_error(other, "holds another run", "calibration.preset", "grpo.learning_rate", "--overwrite")
    assert (workdir / "config.json").read_text() == stored
    resumed = launch(f"--workdir={workdir}", *TINY_FLAGS)  # grpo.stop_at_step is safe to change
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["preset"] == "recal" and summary["grpo_steps"] == 2
    fresh = launch(f"--workdir={workdir}", *TINY_FLAGS, "--config.calibration.preset=grpo", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resumed from" not in fresh.stderr
    assert json.loads((workdir / "summary.json").read_text())["preset"] == "grpo"
    train = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["phase"] == "train"] == [0, 1]
    assert free_for_others(workdir)


def test_summary_is_written_last(tmp_path):
    workdir = tmp_path / "run"
    proc = launch(f"--workdir={workdir}", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary_time = (workdir / "summary.json").stat().st_mtime_ns
    outputs = [workdir / "export" / "config.json", workdir / "eval_rollouts", workdir / "accuracy_vs_cost.png",
               workdir / "training_curves.png", workdir / "config.json"]
    for path in outputs:
        assert path.stat().st_mtime_ns <= summary_time, path
