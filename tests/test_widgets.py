"""Explorer callbacks: plain functions from settings to images and text, and the thin widget wiring."""

import os

import pytest
import torch
from PIL import Image

from utils import config, diffusion, fixtures, iclevr_accuracy, models, widgets
from utils.data import iclevr

OBJECTS = iclevr.load_objects(iclevr.BUNDLED_LABELS / "objects.json")


@pytest.fixture
def schedule(tiny_cfg):
    return diffusion.schedule_from_config(tiny_cfg)


@pytest.fixture(scope="module")
def iclevr_setup(tmp_path_factory):
    """A tiny conditional U-Net (smoke preset, T = 10), its schedule and a random course-format evaluator."""
    cfg = config.make_config("iclevr", "smoke", workdir=str(tmp_path_factory.mktemp("iclevr")))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    checkpoint = fixtures.write_evaluator_fixture(tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")
    return model, diffusion.schedule_from_config(cfg), iclevr_accuracy.load_evaluator(checkpoint)


def test_trajectory_runs_from_noise_to_the_finished_image(tiny_model, schedule):
    result = widgets.sample_trajectory(tiny_model, schedule, (1, 28, 28), sampler="ddim", num_inference_steps=5,
                                       num_frames=4)
    assert len(result.frames) == 4 and result.frame_timesteps[0] == schedule.num_train_timesteps
    first, caption = widgets.frame_view(result, 0)
    last, last_caption = widgets.frame_view(result, 3)
    assert "pure noise" in caption and "finished image" in last_caption
    assert first.size == last.size == (252, 252)  # 28 px enlarged 9×, pixels kept sharp


def test_same_seed_gives_the_same_sample_and_another_seed_a_different_one(tiny_model, schedule):
    run = lambda seed: widgets.sample_trajectory(tiny_model, schedule, (1, 28, 28), num_inference_steps=3,
                                                 seed=seed, num_frames=2).images
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_a_fourth_object_is_refused_with_a_message():
    chosen = ["red sphere", "cyan cylinder", "cyan cube"]
    after, message = widgets.toggle_object(chosen, "gray cube")
    assert after == chosen and "At most 3 objects" in message and "gray cube" in message


def test_clicking_a_chosen_object_removes_it_and_an_unchosen_one_adds_it():
    assert widgets.toggle_object(["red sphere", "cyan cube"], "red sphere") == (["cyan cube"], "")
    assert widgets.toggle_object(["red sphere"], "cyan cube") == (["red sphere", "cyan cube"], "")


def test_generate_scene_shows_the_image_and_the_evaluator_top_predictions(iclevr_setup):
    model, schedule, evaluator = iclevr_setup
    chosen = ["red sphere", "cyan cube"]
    image, text = widgets.generate_scene(model, schedule, (3, 64, 64), chosen, OBJECTS, guidance_scale=2.0,
                                         num_inference_steps=2, evaluator=evaluator)
    assert isinstance(image, Image.Image) and image.size == (256, 256)
    assert "w = 2" in text and "chosen objects in its top 2" in text
    assert len(text.splitlines()) == 2 + 5   # settings, summary, five predictions


def test_top_predictions_are_the_evaluator_highest_scores(iclevr_setup):
    _, _, evaluator = iclevr_setup
    image = torch.zeros(1, 3, 64, 64)
    predictions = widgets.top_predictions(evaluator, image, OBJECTS, k=3)
    scores = evaluator(image)[0]
    names = {i: n for n, i in OBJECTS.items()}
    assert [n for n, _ in predictions] == [names[int(i)] for i in scores.topk(3).indices]


def test_generate_scene_without_an_evaluator_says_how_to_get_one(iclevr_setup):
    model, schedule, _ = iclevr_setup
    _, text = widgets.generate_scene(model, schedule, (3, 64, 64), ["red sphere"], OBJECTS, num_inference_steps=2)
    assert "checkpoint.pth" in text


@pytest.mark.parametrize("chosen", [[], ["red sphere", "cyan cube", "gray cube", "blue cube"]])
def test_generate_scene_refuses_no_object_or_more_than_three(iclevr_setup, chosen):
    model, schedule, _ = iclevr_setup
    image, text = widgets.generate_scene(model, schedule, (3, 64, 64), chosen, OBJECTS)
    assert image is None and "Choose 1 to 3 objects" in text


def test_unconditional_explorer_builds_headless_and_resamples_on_click(tiny_model, schedule):
    box = widgets.unconditional_explorer(tiny_model, schedule, (1, 28, 28), num_inference_steps=3, num_frames=3)
    controls, _, frame, picture, caption = box.children
    first = picture.value
    controls.children[2].value = 7            # seed
    controls.children[3].click()              # Sample
    assert picture.value != first and frame.value == frame.max == 2
    frame.value = 0
    assert "pure noise" in caption.value


def test_iclevr_explorer_refuses_a_fourth_toggle(iclevr_setup):
    model, schedule, evaluator = iclevr_setup
    box = widgets.iclevr_explorer(model, schedule, (3, 64, 64), OBJECTS, evaluator=evaluator, num_inference_steps=2,
                                  chosen=("red sphere", "cyan cylinder", "cyan cube"))
    picker, message = box.children[1], box.children[2]
    gray_cube = next(b for b in picker.children if b.description == "gray cube")
    gray_cube.value = True
    assert gray_cube.value is False and "At most 3 objects" in message.value
    assert "<pre>" in box.children[-1].children[1].value


def test_the_ipywidgets_version_asked_for_is_the_one_imported():
    """`make test` runs this file twice: with the venv's ipywidgets 8 and with Colab's 7.7.1 on PYTHONPATH."""
    import ipywidgets

    expected = os.environ.get("DDPM_EXPECT_IPYWIDGETS")
    assert expected is None or ipywidgets.__version__ == expected
