"""The hand-in steps (utils.handin): one table of names, one way to choose w, the same files from the notebook and the CLI."""

import json

import numpy as np
import pytest
import torch

from PIL import Image

from utils import cli, config, diffusion, export, fixtures, guidance, handin, iclevr_accuracy, models
from utils.data import iclevr
from utils.handin_set import Source


def test_a_guidance_scale_you_set_is_the_one_handed_in(tmp_path):
    chosen = config.make_config("iclevr", "smoke", workdir=str(tmp_path))
    fixed = config.make_config("iclevr", "smoke", workdir=str(tmp_path), guidance_scale=3)
    both = config.make_config("iclevr", "smoke", workdir=str(tmp_path), guidance_scale=3, choose_guidance=True)
    assert (chosen.choose_guidance, fixed.choose_guidance, both.choose_guidance) == (True, False, True)
    sweep = [{"guidance_scale": w, "test": a} for w, a in ((0.0, 0.1), (1.0, 0.5), (2.0, 0.6), (4.0, 0.3))]
    assert handin.guidance_candidates(chosen, sweep) == [1.0, 2.0]          # confirm_top 2; the config's 2.0 among them
    assert handin.guidance_candidates(fixed, sweep) == [3.0]
    assert handin.guidance_candidates(both, sweep) == [1.0, 2.0, 3.0]
    assert handin.guidance_candidates(chosen, None) == [2.0]                 # no evaluator, no sweep
    # the CLI's --guidance_scale is the notebook's parameter
    assert cli.parse_config(["--config", "iclevr", "--preset", "smoke", "--guidance_scale", "3",
                             "--workdir", str(tmp_path)]).choose_guidance is False


def test_export_checks_the_names_the_steps_write(tmp_path):
    imvfx = {f.name for f in export.imvfx_files(tmp_path / "m", tmp_path / "a")}
    assert imvfx == {handin.FILES[n].grid for n in ("mnist", "anime")} | {handin.FILES[n].loss for n in ("mnist", "anime")}
    lab = {f.name for f in export.iclevr_files(tmp_path)}
    assert {handin.FILES["iclevr"].loss, handin.DENOISING, handin.ACCURACY, handin.SWEEP_CSV, handin.SWEEP_PLOT,
            handin.grid_name("test"), handin.grid_name("new_test"), "test/0.png", "new_test/31.png"} <= lab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A smoke iCLEVR config at 16 px, an untrained model, the evaluator fixture and the course's label lists."""
    work = tmp_path_factory.mktemp("work")
    cfg = config.make_config("iclevr", "smoke", image_size=16, workdir=str(work), num_inference_steps=2,
                             sampler="ddim", sweep_steps=2, sweep_scales=(0.0, 1.0, 3.0), confirm_top=1)
    torch.manual_seed(0)
    model = models.build_model(cfg).eval()
    evaluator = iclevr_accuracy.load_evaluator(fixtures.write_evaluator_fixture(work / "checkpoint.pth"), "cpu")
    objects = iclevr.load_objects(iclevr.BUNDLED_LABELS / "objects.json")
    sets = {name: iclevr.encode_labels(iclevr.load_label_lists(iclevr.BUNDLED_LABELS / f"{name}.json"), objects)
            for name in handin.ICLEVR_SETS}
    return cfg, model, diffusion.schedule_from_config(cfg), evaluator, objects, sets, work / "checkpoint.pth"


def test_choosing_w_samples_the_sweeps_best_again_and_hands_in_the_best(tiny, tmp_path):
    cfg, model, schedule, evaluator, objects, sets, evaluator_path = tiny
    out = handin.HandInSet(tmp_path, Source("run", 1))
    rows = handin.sweep_guidance(cfg, model, schedule, evaluator, sets, out, progress=False)
    assert [r["guidance_scale"] for r in rows] == [0.0, 1.0, 3.0]
    choice = handin.choose_guidance(cfg, model, schedule, evaluator, sets, rows, progress=False)
    assert [r.guidance_scale for r in choice.runs] == handin.guidance_candidates(cfg, rows)
    assert choice.hand_in is guidance.best_run(choice.runs) and choice.why == "the best of these with the hand-in sampler"
    handin.save_iclevr_images(choice, out)
    handin.save_denoising(cfg, model, schedule, objects, choice.guidance_scale, out)
    handin.save_accuracy(cfg, choice, rows, evaluator_path, out)
    out.commit()
    saved = json.loads((tmp_path / handin.ACCURACY).read_text())
    assert saved["settings"]["guidance_scale"] == choice.guidance_scale
    assert saved["settings"]["num_inference_steps"] == handin.hand_in_steps(cfg) == 2
    assert {k: v["hits"] for k, v in saved.items() if k != "settings"} == {
        k: a.hits for k, a in choice.hand_in.scores.items()}
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == sorted(f"{i}.png" for i in range(32))
    for name in (handin.grid_name("test"), handin.grid_name("new_test"), handin.DENOISING, handin.FILES["iclevr"].gif,
                 handin.SWEEP_CSV, handin.SWEEP_PLOT):
        assert (tmp_path / name).stat().st_size > 0, name


def test_without_an_evaluator_nothing_is_swept_and_the_configs_w_is_handed_in(tiny, tmp_path):
    cfg, model, schedule, _, _, sets, _ = tiny
    out = handin.HandInSet(tmp_path, Source("run", 1))
    assert handin.sweep_guidance(cfg, model, schedule, None, sets, out) is None
    choice = handin.choose_guidance(cfg, model, schedule, None, sets, None, progress=False)
    assert choice.guidance_scale == cfg.guidance_scale and choice.hand_in.scores == {}
    assert "no evaluator" in choice.why
    assert not (out.path(handin.SWEEP_CSV)).exists()


def test_the_unconditional_hand_in_is_drawn_as_handin_sampling_says(tmp_path):
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path))
    torch.manual_seed(0)
    model = models.build_model(cfg).eval()
    schedule = diffusion.schedule_from_config(cfg)
    samples = handin.draw_unconditional(cfg, model, schedule)
    again = diffusion.sample(model, schedule, 25, handin.image_shape(cfg), **diffusion.handin_sampling(cfg),
                             progress=False)
    torch.testing.assert_close(samples.images, again.images)
    assert len(samples.frames) == cfg.gif_frames
    out = handin.HandInSet(tmp_path, Source("run", 1))
    mine = torch.zeros_like(samples.images)                                # notebook 01: the student's own grid
    handin.save_unconditional(cfg, samples, out, images=mine)
    out.commit()
    pixels = np.asarray(Image.open(tmp_path / handin.FILES["mnist"].grid).convert("L"), dtype=float)
    first = pixels[export.GRID_PADDING:export.GRID_PADDING + cfg.image_size, export.GRID_PADDING:export.GRID_PADDING + cfg.image_size]
    assert abs(first - 127.5).mean() < 3, "the grid is not the images passed in"           # zeros → mid-gray
    assert (tmp_path / handin.FILES["mnist"].gif).stat().st_size > 0
