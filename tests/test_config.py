"""Configs: full-run defaults, presets that change only a few fields, clear errors."""

import dataclasses
from pathlib import Path

import pytest
import torch

from utils import config


def test_smoke_switch_selects_the_smoke_preset(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_SMOKE", "1")
    assert config.make_config("mnist", workdir=str(tmp_path)).max_steps == config.MNISTConfig.PRESETS["smoke"]["max_steps"]
    monkeypatch.setenv("DDPM_SMOKE", "0")
    assert config.make_config("mnist", workdir=str(tmp_path)).max_steps is None


def test_smoke_runs_keep_out_of_the_real_work_dir_even_under_DDPM_WORKDIR(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_WORKDIR", str(tmp_path))
    monkeypatch.setenv("DDPM_SMOKE", "0")
    assert config.make_config("mnist").data_dir == str(tmp_path / "data")
    monkeypatch.setenv("DDPM_SMOKE", "1")
    assert config.make_config("mnist").data_dir == str(tmp_path / ".smoke" / "data")


def test_preset_changes_only_its_own_fields(tmp_path):
    full = config.make_config("mnist", "full", workdir=str(tmp_path))
    cpu = config.make_config("mnist", "cpu", workdir=str(tmp_path))
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(cpu, f.name)}
    assert changed == set(config.MNISTConfig.PRESETS["cpu"])


def test_overrides_win_and_none_keeps_the_preset(tmp_path):
    cfg = config.make_config("mnist", "cpu", workdir=str(tmp_path), batch_size=32, num_epochs=None)
    assert cfg.batch_size == 32 and cfg.num_epochs == config.MNISTConfig.num_epochs


def test_unknown_field_preset_and_config_are_named(tmp_path):
    with pytest.raises(ValueError, match="no field"):
        config.make_config("mnist", "full", workdir=str(tmp_path), epochs=3)
    with pytest.raises(ValueError, match="Unknown preset 'gpu'"):
        config.make_config("mnist", "gpu")
    with pytest.raises(ValueError, match="Unknown config"):
        config.make_config("cifar")


def test_inconsistent_model_settings_are_explained(tmp_path):
    with pytest.raises(ValueError, match="must divide"):
        config.make_config("mnist", "full", workdir=str(tmp_path), norm_num_groups=24)
    with pytest.raises(ValueError, match="one True/False per resolution level"):
        config.make_config("mnist", "full", workdir=str(tmp_path), attention_levels=(False, True))


def test_paths_live_under_the_work_dir_and_are_created(tmp_path):
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path))
    paths = cfg.paths()
    assert paths["output_dir"] == tmp_path / "outputs" / "mnist" and paths["output_dir"].is_dir()
    assert paths["checkpoint_dir"] == tmp_path / "checkpoints" / "mnist"


@pytest.mark.parametrize("name", sorted(config.CONFIGS))
def test_every_config_builds_in_full_and_smoke(name, tmp_path):
    for preset in ("full", "smoke"):
        cfg = config.make_config(name, preset, workdir=str(tmp_path))
        assert cfg.name == name


def test_device_choice_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("DDPM_DEVICE", raising=False)  # the tests' stand-in device is an override
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.pick_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert config.pick_device().type == "cpu"


def test_seeding_repeats_random_draws():
    config.seed_everything(5)
    a = torch.randn(3)
    config.seed_everything(5)
    assert torch.equal(a, torch.randn(3))


def test_the_bundle_version_agrees_in_pyproject_utils_and_every_notebook():
    import json
    import re
    import tomllib
    from pathlib import Path

    import utils

    root = Path(__file__).resolve().parent.parent
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"] == utils.__version__
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        setup = "".join(json.loads(notebook.read_text())["cells"][1]["source"])
        assert re.search(r'BUNDLE_VERSION = "([^"]+)"', setup).group(1) == utils.__version__, notebook.name


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("num_train_timesteps", 0), ("checkpoint_every", 0),
                                          ("log_every", -1), ("learning_rate", 0.0), ("max_steps", 0)])
def test_a_setting_that_must_be_positive_is_refused_when_the_config_is_made(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        config.make_config("mnist", "smoke", workdir=str(tmp_path), **{field: value})


def test_an_image_size_the_unet_cannot_halve_is_refused_with_the_sizes_that_work(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        config.make_config("mnist", "full", workdir=str(tmp_path), image_size=30)   # 3 levels: 30 → 15 → 7.5
    assert config.make_config("mnist", "full", workdir=str(tmp_path), image_size=32).image_size == 32


@pytest.mark.parametrize("field, value", [("guidance_scale", -1.0), ("sweep_scales", (0.0, -2.0))])
def test_a_negative_guidance_scale_is_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match="w must be ≥ 0"):
        config.make_config("iclevr", "smoke", workdir=str(tmp_path), **{field: value})


def test_a_papermill_parameter_the_notebook_does_not_have_is_refused_with_the_known_ones():
    history = ["", "import torch", "preset = None\nnum_epochs = None\n", "# Parameters\nnum_epochs = 3\nlearning_rate = 0.001\n"]
    with pytest.raises(ValueError, match=r"\['learning_rate'\].*\['num_epochs', 'preset'\]"):
        config.check_notebook_parameters(history)
    config.check_notebook_parameters(history[:3] + ["# Parameters\nnum_epochs = 3\n"])   # known: fine
    config.check_notebook_parameters(history[:3])                                        # not under papermill
    config.check_notebook_parameters(history[:3] + ["# Parameters I changed\nnum_epochs = 50\n"])  # a student's cell
    config.check_notebook_parameters(history[:3] + ["# Parameters\nPAPERMILL_INPUT_PATH = 'a.ipynb'\n"])


def test_papermill_strings_become_the_type_each_field_declares(tmp_path):
    # papermill's -p turns "True", "30" and "1.5" into Python values, but leaves "false" a (truthy) string
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), resume="false", channels_last="True",
                             max_steps="30", time_budget_minutes="1.5", block_out_channels="8,16", run_name=1)
    assert cfg.resume is False and cfg.channels_last is True
    assert (cfg.max_steps, cfg.time_budget_minutes, cfg.block_out_channels, cfg.run_name) == (30, 1.5, (8, 16), "1")
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), resume=0, max_steps=30.0, learning_rate="1e-3")
    assert cfg.resume is False and cfg.max_steps == 30 and type(cfg.max_steps) is int and cfg.learning_rate == 1e-3
    smoke = config.make_config("mnist", "smoke", workdir=str(tmp_path))
    assert config.make_config("mnist", "smoke", workdir=str(tmp_path), max_steps="none").max_steps == smoke.max_steps


@pytest.mark.parametrize("field, value, message", [("resume", "maybe", "not a yes/no value"),
                                                   ("max_steps", "2.5", "not a whole number"),
                                                   ("learning_rate", "fast", "not a number")])
def test_a_parameter_that_is_not_of_its_fields_type_is_refused(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=f"{field}={value!r} is {message}"):
        config.make_config("mnist", "smoke", workdir=str(tmp_path), **{field: value})


@pytest.mark.notebook
def test_papermill_stops_notebook_01_at_an_unknown_parameter(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="learning_rate"):
        papermill.execute_notebook(str(Path(__file__).resolve().parent.parent / "notebooks" / "01_mnist_ddpm.ipynb"),
                                   str(tmp_path / "out.ipynb"), parameters={"learning_rate": 1e-3},
                                   kernel_name="python3", cwd=str(tmp_path), progress_bar=False)


def test_a_folder_that_cannot_be_written_is_named_when_the_paths_are_made(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), output_dir=str(blocker / "out"))
    with pytest.raises(PermissionError, match="output_dir=.*cannot be written"):
        cfg.paths()


def test_a_run_name_gives_an_experiment_its_own_folders_and_a_bad_one_is_explained(tmp_path):
    handin = config.make_config("iclevr", "smoke", workdir=str(tmp_path))
    experiment = config.make_config("iclevr", "smoke", workdir=str(tmp_path), run_name="drop0")
    assert handin.output_dir.endswith("outputs/iclevr") and experiment.output_dir.endswith("outputs/iclevr-drop0")
    assert experiment.checkpoint_dir.endswith("checkpoints/iclevr-drop0")
    assert experiment.data_dir == handin.data_dir and experiment.cache_dir == handin.cache_dir   # data are shared
    assert config.make_config("dcgan_anime", workdir=str(tmp_path), run_name="50ep").checkpoint_dir.endswith(
        "checkpoints/dcgan_anime-50ep")
    with pytest.raises(ValueError, match="run_name='my run'.*letters, digits"):
        config.make_config("mnist", workdir=str(tmp_path), run_name="my run")


def test_a_saved_config_comes_back_with_this_machines_folders(tmp_path):
    trained = config.make_config("anime", "smoke", workdir="/content/gone", run_name="a", download_dir="/content/gone/x",
                                 learning_rate=3e-4)
    saved = {**trained.to_dict(), "a_field_from_another_version": 1}
    here = config.make_config("anime", workdir=str(tmp_path), run_name="a")
    again = config.from_saved(saved, here)
    assert again.architecture() == trained.architecture() and again.learning_rate == 3e-4
    assert (again.workdir, again.checkpoint_dir, again.download_dir) == (here.workdir, here.checkpoint_dir, here.data_dir)


def test_a_checkpoint_from_before_min_snr_counts_as_trained_with_the_plain_loss(tmp_path):
    """min_snr_gamma is new, with default 5 for anime: a checkpoint that never saved it trained with Algorithm 1's
    plain loss (γ = 0), so it must not pass for a Min-SNR run, finished or not."""
    from pathlib import Path

    from utils import training
    saved = config.make_config("anime", "smoke", workdir=str(tmp_path)).to_dict()
    del saved["min_snr_gamma"]
    here = config.make_config("anime", "smoke", workdir=str(tmp_path))
    assert here.min_snr_gamma == 5.0 and config.from_saved(saved, here).min_snr_gamma == 0.0
    for finished in (True, False):
        with pytest.raises(training.CheckpointError, match=r"min_snr_gamma: checkpoint has 0\.0, config has 5\.0"):
            training.check_same_training(saved, here, Path("x/last.pt"), finished=finished)
    plain = config.make_config("anime", "smoke", workdir=str(tmp_path), min_snr_gamma=0)
    assert training.check_same_training(saved, plain, Path("x/last.pt"), finished=True) == []
