"""Bad input: exit 2, every problem listed once with its value, no traceback, nothing created."""

import os

import pytest

from evo_mpi.config import Config, load_toml, merge, to_toml
from evo_mpi.run import main
from helpers import TINY, run_evo

BAD = [
    (["--truncation-fraction", "0.7"], "--truncation-fraction must be in (0, 0.5], got 0.7"),
    (["--truncation-fraction", "0"], "--truncation-fraction must be in (0, 0.5], got 0.0"),
    (["--perturb-factors", "0.8,-1"], "--perturb-factors must be finite and > 0, got -1.0"),
    (["--perturb-factors", "a,b"], "invalid --perturb-factors 'a,b'"),
    (["--net-arch", "64,0"], "--net-arch needs positive layer sizes, got 64,0"),
    (["--resample-probability", "1.5"], "--resample-probability must be in [0, 1], got 1.5"),
    (["--generations", "0"], "--generations must be > 0, got 0"),
    (["--steps-per-generation", "-5"], "--steps-per-generation must be > 0, got -5"),
    (["--steps-per-generation", "1000"], "--steps-per-generation 1000 is not a multiple of n_steps * n_envs"),
    (["--n-envs", "0"], "--n-envs must be > 0, got 0"),
    (["--eval-episodes", "-1"], "--eval-episodes must be >= 0, got -1"),
    (["--agents-per-rank", "1"], "population of 1 (1 rank(s) x 1 agent(s)) is too small"),
    (["--env-id", "NoSuchEnv-v9"], "--env-id 'NoSuchEnv-v9' is not a registered gymnasium environment"),
    (["--algo", "ppo2"], "argument --algo: invalid choice: 'ppo2'"),
    (["--backend", "smoke-signals"], "argument --backend: invalid choice: 'smoke-signals'"),
    (["--selection", "best"], "argument --selection: invalid choice: 'best'"),
    (["--generations", "ten"], "argument --generations: invalid int value: 'ten'"),
    (["--search-space", "learning_rate=uniform:0.1:0.01"], "learning_rate: prior 'uniform:0.1:0.01' needs finite"),
    (["--search-space", "learning_rate=loguniform:0:1"], "loguniform prior 'loguniform:0:1' needs low > 0"),
    (["--search-space", "n_epochs=int:3.5:7"], "n_epochs: int prior bounds must be integers"),
    (["--search-space", "momentum=uniform:0:1"], "unknown ppo hyperparameter 'momentum'"),
    (["--search-space", "batch_size=choice:1,64"], "1 is out of range (batch_size must be an integer >= 2)"),
    (["--search-space", "gamma"], "invalid --search-space 'gamma': expected NAME=PRIOR"),
    (["--search-space", "ent_coef=gauss:0:1"], "unknown prior kind 'gauss'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be > 0, got 0"),
    (["--torch-threads", "-1"], "--torch-threads must be >= 0 (0 = automatic), got -1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be > 0, got 0"),
    (["--resume", "/nonexistent/run"], "--resume '/nonexistent/run': no config.json there"),
    (["--selection", "tournament", "--tournament-size", "1"], "--tournament-size must be >= 2, got 1"),
    (["--ttest-alpha", "1.5"], "--ttest-alpha must be in (0, 1), got 1.5"),
    (["--explore", "bayes"], "argument --explore: invalid choice: 'bayes'"),
    (["--buffer-size", "0"], "--buffer-size must be > 0, got 0"),
    (["--algo", "dqn", "--env-id", "Pendulum-v1"], "--algo dqn needs a Discrete action space; 'Pendulum-v1' has Box"),
    (["--algo", "sac"], "--algo sac needs a Box action space; 'CartPole-v1' has Discrete(2)"),
    (["--env-kwargs", '{"bogus": 3}'], '--env-kwargs {"bogus": 3}: cannot create it'),
    (["--env-kwargs", "[1]"], "invalid --env-kwargs '[1]': expected a JSON object"),
    (["--env-kwargs", "{oops"], "invalid --env-kwargs '{oops': not JSON"),
    (["--env-id", "user_envs:NoSuchThing"], "--env-id 'user_envs:NoSuchThing' is not a registered gymnasium"),
    (["--env-id", "no_such_module:Env"], "--env-id 'no_such_module:Env' is not a registered gymnasium"),
    (["--search-space", "tau=uniform:0:1"], "unknown ppo hyperparameter 'tau'"),
    (["--algo", "dqn", "--search-space", "clip_range=uniform:0.1:0.2"], "unknown dqn hyperparameter 'clip_range'"),
    # every searchable hyperparameter has a type and an interval (hparams.BOUNDS)
    (["--search-space", "gamma=uniform:0.9:1.5"], "1.5 is out of range (gamma must be in (0, 1])"),
    (["--search-space", "learning_rate=uniform:-1:1"], "-1.0 is out of range (learning_rate must be > 0)"),
    (["--search-space", "batch_size=choice:a,b"], "batch_size=choice:a,b: 'a' is not a number"),
    (["--search-space", "batch_size=uniform:32:64"], "batch_size takes integers; use int:LO:HI or choice:A,B"),
    (["--search-space", "n_epochs=choice:1.5,3"], "1.5 is not an integer (n_epochs must be an integer >= 1)"),
    (["--search-space", "n_epochs=int:0:3"], "0 is out of range (n_epochs must be an integer >= 1)"),
    (["--search-space", "gae_lambda=uniform:0.5:1.2"], "1.2 is out of range (gae_lambda must be in [0, 1])"),
    (["--search-space", "ent_coef=uniform:-0.1:0.1"], "-0.1 is out of range (ent_coef must be >= 0)"),
    (["--search-space", "vf_coef=const:-1"], "-1 is out of range (vf_coef must be >= 0)"),
    (["--search-space", "clip_range=const:0"], "0 is out of range (clip_range must be in (0, 1])"),
    (["--algo", "a2c", "--search-space", "max_grad_norm=const:0"], "0 is out of range (max_grad_norm must be > 0)"),
    (
        ["--algo", "td3", "--env-id", "Pendulum-v1", "--steps-per-generation", "256", "--search-space",
         "policy_delay=int:0:3"],
        "policy_delay=int:0:3: 0 is out of range (policy_delay must be an integer >= 1)",
    ),
    (
        ["--algo", "sac", "--env-id", "Pendulum-v1", "--steps-per-generation", "256", "--search-space",
         "tau=uniform:0:0.5"],
        "0.0 is out of range (tau must be in (0, 1])",
    ),
    (
        ["--algo", "sac", "--env-id", "Pendulum-v1", "--steps-per-generation", "256", "--search-space",
         "gradient_steps=int:0:2"],
        "0 is out of range (gradient_steps must be an integer >= 1)",
    ),
    (
        ["--algo", "ddpg", "--env-id", "Pendulum-v1", "--steps-per-generation", "256", "--search-space",
         "action_noise_sigma=uniform:-1:1"],
        "-1.0 is out of range (action_noise_sigma must be >= 0)",
    ),
    (
        ["--algo", "dqn", "--steps-per-generation", "256", "--search-space", "exploration_final_eps=uniform:0.1:1.5"],
        "1.5 is out of range (exploration_final_eps must be in [0, 1])",
    ),
    (
        ["--algo", "dqn", "--steps-per-generation", "256", "--search-space", "target_update_interval=int:0:10"],
        "0 is out of range (target_update_interval must be an integer >= 1)",
    ),
    (
        ["--algo", "td3", "--env-id", "Pendulum-v1", "--steps-per-generation", "256", "--search-space",
         "target_noise_clip=const:-0.5"],
        "-0.5 is out of range (target_noise_clip must be >= 0)",
    ),
    # a run dir must really accept files: root passes every permission check, /proc and /sys refuse anyway
    (["--run-dir", "/proc/evo/run"], "--run-dir '/proc/evo/run': cannot create files in '/proc'"),
    (["--run-dir", "/sys/x"], "--run-dir '/sys/x': cannot create files in '/sys'"),
    (["--algo", "Sac"], "--algo sac needs a Box action space"),  # names are case-insensitive: this is SAC
    (["--time-limit", "1:60"], "--time-limit '1:60' is not a duration (seconds, or [D-]HH:MM:SS)"),
    (["--time-limit", "0"], "--time-limit '0' must be a positive, finite duration"),
    # async mode refuses what needs every rank at once, or a barrier between checkpoints
    (["--mode", "async", "--backend", "collective"], "--backend collective needs every rank at once"),
    (["--mode", "async", "--algo", "dqn", "--steps-per-generation", "256", "--copy-replay-buffer"],
     "--copy-replay-buffer is not supported with --mode async"),
    (["--mode", "async", "--checkpoint-every", "2"], "--checkpoint-every 2 with --mode async"),
    (["--ready-after", "-1"], "--ready-after must be >= 0 env steps, got -1"),
    (["--max-failures", "-2"], "--max-failures must be >= 0 (or -1: the population size), got -2"),
    (["--mode", "lockstep"], "argument --mode: invalid choice: 'lockstep'"),
    (["--target-fitness", "high"], "--target-fitness 'high': expected a finite number"),
    (["--target-fitness", "nan"], "--target-fitness 'nan': expected a finite number"),
    (["--target-metric", "median"], "argument --target-metric: invalid choice: 'median'"),
    (["--share-experience"], "--share-experience needs an off-policy algorithm with a replay buffer"),
    (["--share-experience", "--member", "examples.custom_trainer:make_member"], "--share-experience with --member"),
    # evolvable networks
    (["--mutation-probs", "arch=1,grow=2"], "--mutation-probs: 'grow=2' is not KIND=WEIGHT"),
    (["--mutation-probs", "hparams=-1"], "'hparams=-1': weights must be finite and >= 0"),
    (["--mutation-probs", "none=0"], "at least one weight must be positive"),
    (["--mutation-probs", "arch=1"], "--mutation-probs arch=1.0 needs an arch prior for net_arch"),
    (["--mutation-probs", "activation=1", "--search-space", "activation_fn=const:relu"],
     "needs a choice of two or more activations"),
    (["--search-space", "net_arch=arch:1:3:128:256"], "--net-arch 64,64: every member starts from it"),
    (["--search-space", "net_arch=arch:3:1:16:64"], "needs MIN <= MAX for layers and nodes"),
    (["--search-space", "net_arch=arch:1:2:20:30:16"], "no multiple of 16 nodes lies in [20, 30]"),
    (["--search-space", "net_arch=choice:64-64,64-x"], "'64-x' is not an architecture"),
    (["--search-space", "activation_fn=choice:relu,sigmoid"], "unknown activation 'sigmoid'"),
    (["--search-space", "net_arch=choice:64,32", "--policy", "CnnPolicy"],
     "--policy CnnPolicy: architecture, activation and weight mutation"),
    (["--mutation-probs", "weights=1", "--member", "examples.custom_trainer:make_member",
      "--search-space", "lr=loguniform:1e-4:1e-2"], "a custom member mutates hyperparameters only"),
    (["--mutate", "all", "--explore", "pb2"], "--mutate all with --explore pb2"),
    (["--weight-mutation-fraction", "0"], "--weight-mutation-fraction must be in (0, 1], got 0.0"),
    (["--weight-mutation-sd", "inf"], "--weight-mutation-sd must be positive and finite, got inf"),
    # --device: its form on rank 0 (a GPU that is not there: tests/test_devices.py)
    (["--device", "gpu"], "--device 'gpu' is not a device (choose from auto, cpu, cuda or cuda:N (N >= 0))"),
    (["--device", "cuda:-1"], "--device 'cuda:-1' is not a device"),
    (["--device", "cuda", "--member", "examples.custom_trainer:make_member", "--search-space",
      "lr=loguniform:1e-4:1e-2"], "--device cuda places the SB3 adapter's members; a custom --member places its own"),
]  # fmt: skip


def _run(argv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main([*TINY, "--agents-per-rank", "2", "--run-dir", str(run_dir), *argv])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".evo-mpi-probe")], "the write probe is removed"
    captured = capsys.readouterr()
    assert not run_dir.exists(), "nothing may be created on bad input"
    return code, captured


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_naming_the_value(argv, message, tmp_path, capsys):
    code, captured = _run(argv, tmp_path, capsys)
    assert code == 2
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.err.startswith("evo-mpi: invalid configuration:")


def test_every_problem_listed_once(tmp_path, capsys):
    argv = [
        "--truncation-fraction",
        "0.9",
        "--generations",
        "0",
        "--env-id",
        "Nope-v0",
        "--search-space",
        "gamma=uniform:1:0",
    ]
    code, captured = _run(argv, tmp_path, capsys)
    problems = [ln for ln in captured.err.splitlines() if ln.startswith("  - ")]
    assert code == 2 and len(problems) == 4 and len(set(problems)) == 4, captured.err


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'generations = "many"\ncolour = "blue"\nperturb_factors = [0.8, "x"]\n'
        '[search_space]\nlearning_rate = "uniform:1:0"\n'
    )
    code, captured = _run(["--config", str(bad)], tmp_path, capsys)
    assert code == 2
    for fragment in [
        "generations = 'many': expected int",
        "unknown key 'colour' in config file",
        "perturb_factors = [0.8, 'x']: expected a list of float values",
    ]:
        assert fragment in captured.err
    broken = tmp_path / "broken.toml"
    broken.write_text("generations = [\n")
    code, captured = _run(["--config", str(broken)], tmp_path, capsys)
    assert code == 2 and "invalid TOML" in captured.err
    code, captured = _run(["--config", str(tmp_path / "missing.toml")], tmp_path, capsys)
    assert code == 2 and "cannot read" in captured.err


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main([*TINY, "--agents-per-rank", "2", "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "exists and is not a directory" in err
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main([*TINY, "--agents-per-rank", "2", "--run-dir", str(ro / "run")]) == 2


def test_existing_foreign_dir_is_not_touched(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    code = main([*TINY, "--agents-per-rank", "2", "--run-dir", str(foreign)])
    assert code == 2 and "holds no evo-mpi run" in capsys.readouterr().err
    assert os.listdir(foreign) == ["notes.txt"]


def test_file_values_overridden_by_flags_and_toml_roundtrip(tmp_path):
    cfg = merge({"generations": 5, "seed": 9, "search_space": {"gamma": "const:0.97"}}, {"seed": 11})
    assert (cfg.generations, cfg.seed, cfg.space_specs["gamma"]) == (5, 11, "const:0.97")
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    import tomllib

    assert merge(tomllib.loads(path.read_text()), {}) == Config(generations=5, seed=11, search_space=cfg.space_specs)
    env = merge({"env_kwargs": {"g": 3.5, "name": "x"}, "normalize": True, "algo": "sac"}, {"elitism": True})
    assert merge(tomllib.loads(to_toml(env)), {}).to_dict() == env.to_dict()
    assert env.space_specs["tau"] == "loguniform:0.001:0.05"


def test_boolean_flags_and_env_kwargs_parse():
    from evo_mpi.config import parse

    parsed = parse(["--normalize", "--no-elitism", "--env-kwargs", '{"g": 9.81}', "--explore", "pb2"])
    assert parsed.cli_values == {"normalize": True, "elitism": False, "env_kwargs": {"g": 9.81}, "explore": "pb2"}


def test_bad_input_under_mpiexec_reported_once_before_work(tmp_path):
    proc = run_evo([*TINY, "--truncation-fraction", "0.9", "--run-dir", str(tmp_path / "r")], 2, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("--truncation-fraction must be in (0, 0.5], got 0.9") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content", ["{not json", '{"seed": 1}'])
def test_corrupt_saved_config_is_reported_not_raised(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(content)
    for argv in (["--run-dir", str(run_dir)], ["--resume", str(run_dir)]):
        code = main([*TINY, "--agents-per-rank", "2", *argv])
        err = capsys.readouterr().err
        assert code == 2 and "config.json" in err and "Traceback" not in err, err
    assert os.listdir(run_dir) == ["config.json"]


def test_bad_input_list_is_long():
    assert len(BAD) >= 40


def test_algorithm_names_are_case_insensitive(tmp_path):
    for argv in (["--algo", "SAC"], ["--algo", "Sac"]):
        proc = run_evo([*argv, "--env-id", "Pendulum-v1", "--agents-per-rank", "2", "--print-config"], None)
        assert 'algo = "sac"' in proc.stdout
    path = tmp_path / "c.toml"
    path.write_text('algo = "DQN"\nselection = "WTA"\n')
    assert merge(load_toml(str(path)), {}).algo == "dqn"
    assert merge(load_toml(str(path)), {}).selection == "wta"


def test_env_kwargs_with_null_round_trips_through_toml(tmp_path):
    """TOML has no null: such kwargs are written as their JSON text, which --config reads back."""
    cfg = merge({}, {"env_kwargs": {"render_mode": None, "g": 9.81}})
    text = to_toml(cfg)
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert merge(load_toml(str(path)), {}).env_kwargs == {"render_mode": None, "g": 9.81}
    plain = merge({}, {"env_kwargs": {"g": 9.81}, "perturb_factors": (0.8, float("inf"))})
    path.write_text(to_toml(plain))
    assert "[env_kwargs]" in path.read_text()  # a table when TOML can hold it; inf is valid TOML
    assert merge(load_toml(str(path)), {}).to_dict() == plain.to_dict()


def test_env_kwargs_null_runs_and_writes_its_config(tmp_path):
    run_dir = tmp_path / "run"
    run_evo([*TINY, "--generations", "1", "--agents-per-rank", "2", "--env-kwargs", '{"render_mode": null}',
             "--run-dir", str(run_dir)], 2)  # fmt: skip
    assert merge(load_toml(str(run_dir / "config.toml")), {}).env_kwargs == {"render_mode": None}


def test_unreadable_checkpoint_is_exit_2_on_every_rank(tmp_path):
    """An exception on rank 0 before the plan is broadcast must not leave rank 1 waiting in the broadcast."""
    run_dir = tmp_path / "run"
    run_evo([*TINY, "--generations", "2", "--agents-per-rank", "2", "--run-dir", str(run_dir)], None)
    population = sorted((run_dir / "checkpoints").glob("gen_*/population.json"))[-1]
    population.write_text("{truncated")
    proc = run_evo(["--resume", str(run_dir)], 2, timeout=60, check=False)
    assert proc.returncode == 2
    assert "cannot read the checkpoint of generation" in proc.stderr and "Traceback" not in proc.stderr


def test_any_unexpected_error_while_planning_is_exit_2(tmp_path, capsys, monkeypatch):
    import evo_mpi.config as config_mod

    def broken(cfg, world_size, **factories):
        raise KeyError("surprise")

    monkeypatch.setattr(config_mod, "validate", broken)
    code = main([*TINY, "--agents-per-rank", "2", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot check the configuration: KeyError: 'surprise'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90.0), ("2.5", 2.5), ("0:30", 30.0), ("5:00", 300.0), ("01:00:00", 3600.0), ("1-00:00:00", 86400.0),
     ("2-03:04:05", 183845.0), ("1-2", 93600.0)],
)  # fmt: skip
def test_time_limit_formats(text, seconds):
    from evo_mpi.config.schema import parse_duration

    assert parse_duration(text) == seconds
    assert Config(time_limit=text).time_limit_s == seconds


def test_help_prints_every_option_and_exits_0():
    """argparse formats help texts with %: a bare % in one (e.g. '20 %') breaks --help for every option."""
    import subprocess
    import sys

    from evo_mpi.config.schema import FIELDS
    from helpers import ROOT, child_env

    proc = subprocess.run(
        [sys.executable, "-m", "evo_mpi.run", "--help"], capture_output=True, text=True, env=child_env(), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert all(f"--{name.replace('_', '-')}" in proc.stdout for name in FIELDS)
