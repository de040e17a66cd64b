"""Course-protocol accuracy: the official checkpoint format, the formula, the guidance sweep."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from utils import config, diffusion, fixtures, guidance, iclevr_accuracy, models, viz
from utils.data import iclevr

from course_reference import course_compute_acc

LABELS = iclevr.BUNDLED_LABELS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fixtures.write_evaluator_fixture(tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")


@pytest.fixture(scope="module")
def evaluator(checkpoint):
    return iclevr_accuracy.load_evaluator(checkpoint, "cpu")


def real_labels(name):
    objects = iclevr.load_objects(LABELS / "objects.json")
    return iclevr.encode_labels(iclevr.load_label_lists(LABELS / name), objects)


def random_images(n, seed=0):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def course_network(checkpoint):
    """The course's evaluator network, built as its evaluator.py builds it."""
    net = resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return net.eval()


def numpy_accuracy(scores, labels):
    """Σ_i |top-k_i(scores_i) ∩ true_i| / Σ_i k_i, in numpy."""
    hits = total = 0
    for s, y in zip(scores, labels):
        k = int(y.sum())
        hits += int(y[np.argsort(-s, kind="stable")[:k]].sum())
        total += k
    return hits / total


def test_fixture_is_in_the_official_format(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert list(ckpt) == ["model"]
    assert ckpt["model"]["fc.0.weight"].shape == (24, 512)


def test_accuracy_equals_an_independent_computation(checkpoint, evaluator):
    labels, images = real_labels("test.json"), random_images(32)
    with torch.no_grad():
        scores = course_network(checkpoint)(images).numpy()
    assert iclevr_accuracy.accuracy(evaluator, images, labels).value == numpy_accuracy(scores, labels.numpy())


def test_count_hits_matches_the_course_compute_acc_loop():
    scores, labels = torch.rand(40, 24, generator=torch.Generator().manual_seed(1)), torch.zeros(40, 24)
    for i in range(40):
        labels[i, torch.randperm(24)[:1 + i % 3]] = 1
    acc, total = course_compute_acc(scores, labels)
    result = iclevr_accuracy.count_hits(scores, labels)
    assert (result.hits, result.total) == (acc, total)


@pytest.mark.parametrize("name, total", [("test.json", 72), ("new_test.json", 84)])
def test_full_set_accuracy_is_a_multiple_of_one_over_the_label_count(evaluator, name, total):
    result = iclevr_accuracy.accuracy(evaluator, random_images(32, seed=total), real_labels(name))
    assert result.total == total
    assert result.value * total == pytest.approx(round(result.value * total), abs=1e-9)


def test_batching_does_not_change_the_accuracy(evaluator):
    labels, images = real_labels("new_test.json"), random_images(32, seed=3)
    whole = iclevr_accuracy.accuracy(evaluator, images, labels)
    assert iclevr_accuracy.accuracy(evaluator, images, labels, batch_size=5) == whole


def test_images_outside_model_space_are_rejected(evaluator):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        iclevr_accuracy.accuracy(evaluator, random_images(2) * 255, real_labels("test.json")[:2])


def test_as_saved_equals_a_png_round_trip(tmp_path):
    image = random_images(1, seed=5)
    viz.grid_image(image, nrow=1, padding=0).save(tmp_path / "0.png")
    with Image.open(tmp_path / "0.png") as im:
        png = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.equal(iclevr_accuracy.as_saved(image), png)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(iclevr_accuracy.EvaluatorError, match="data_links.md"):
        iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth")


@pytest.mark.parametrize("form", ["bare state dict", "'model' with module. prefix", "bare with module. prefix"])
def test_evaluator_accepts_the_forms_tas_hand_out(tmp_path, checkpoint, form):
    weights = torch.load(checkpoint, weights_only=True)["model"]
    if "module." in form:                                       # saved from nn.DataParallel
        weights = {f"module.{k}": v for k, v in weights.items()}
    torch.save({"model": weights} if "'model'" in form else weights, tmp_path / "checkpoint.pth")
    loaded = iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in course_network(checkpoint).state_dict().items())


@pytest.mark.parametrize("ckpt", [
    {"state_dict": {f"layer{i}.weight": torch.zeros(1) for i in range(300)}},   # some other trainer's format
    resnet18(weights=None).state_dict(),                                          # torchvision's head: fc.weight
    [torch.zeros(1)],
], ids=["other format", "plain resnet18", "list"])
def test_other_checkpoints_get_one_short_message_with_the_course_format(tmp_path, ckpt):
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    with pytest.raises(iclevr_accuracy.EvaluatorError, match=r"\{'model': state_dict\}") as err:
        iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth")
    message = str(err.value).replace(iclevr_accuracy.HELP, "")
    assert len(message) < 400 and "layer299" not in message and "layer4.1.conv2" not in message


def test_a_checkpoint_with_the_wrong_head_size_names_the_shape(tmp_path):
    net = resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 10), nn.Sigmoid())
    torch.save({"model": net.state_dict()}, tmp_path / "checkpoint.pth")
    with pytest.raises(iclevr_accuracy.EvaluatorError, match=r"fc\.0\.weight of shape \(10, 512\), not \(24, 512\)"):
        iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth")


def test_a_checkpoint_with_python_objects_is_refused_for_safety_and_says_how_to_resave(tmp_path):
    torch.save({"model": {}, "extra": Image.new("RGB", (1, 1))}, tmp_path / "checkpoint.pth")  # needs pickle
    with pytest.raises(iclevr_accuracy.EvaluatorError, match="Python objects beyond tensors") as err:
        iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth")
    assert "torch.save({'model': net.state_dict()}, path)" in str(err.value)
    assert "download" not in str(err.value).lower()


def test_a_corrupt_checkpoint_says_download_again(tmp_path):
    (tmp_path / "checkpoint.pth").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(iclevr_accuracy.EvaluatorError, match="Download it again"):
        iclevr_accuracy.load_evaluator(tmp_path / "checkpoint.pth")


def test_find_evaluator_looks_in_data_dir(tmp_path, checkpoint):
    assert iclevr_accuracy.find_evaluator("", tmp_path) is None
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "checkpoint.pth").write_bytes(checkpoint.read_bytes())
    assert iclevr_accuracy.find_evaluator("", tmp_path) == tmp_path / "file" / "checkpoint.pth"


def test_find_evaluator_rejects_a_wrong_explicit_path(tmp_path):
    with pytest.raises(iclevr_accuracy.EvaluatorError, match="does not exist"):
        iclevr_accuracy.find_evaluator(tmp_path / "nope.pth", tmp_path)


def test_save_accuracy_writes_hits_and_labels(tmp_path):
    path = iclevr_accuracy.save_accuracy({"test": iclevr_accuracy.Accuracy(54, 72)}, tmp_path / "accuracy.json",
                                         guidance_scale=2.0)
    assert json.loads(path.read_text()) == {"test": {"accuracy": 0.75, "hits": 54, "labels": 72},
                                            "settings": {"guidance_scale": 2.0}}


def test_guidance_sweep_gives_one_row_per_scale(tmp_path, evaluator):
    cfg = config.make_config("iclevr", "smoke", image_size=16, workdir=str(tmp_path))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    labels = real_labels("test.json")[:4]
    rows = guidance.guidance_sweep(model, diffusion.schedule_from_config(cfg), evaluator, {"test": labels},
                                          [0.0, 2.0], image_shape=(3, 16, 16), num_inference_steps=2, progress=False)
    assert [r["guidance_scale"] for r in rows] == [0.0, 2.0]
    assert all(0 <= r["test"] <= 1 for r in rows)


def test_save_sweep_writes_the_csv(tmp_path):
    rows = [{"guidance_scale": 0.0, "test": 0.25}, {"guidance_scale": 2.0, "test": 0.5}]
    guidance.save_sweep(rows, tmp_path / "sweep.csv", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.csv").read_text().splitlines() == ["guidance_scale,test", "0.0,0.25", "2.0,0.5"]
    assert (tmp_path / "sweep.png").stat().st_size > 0


# ----------------------------------------------------------------------------- choosing w for the hand-in
def _run(w, test_hits, new_hits):
    scores = {"test": iclevr_accuracy.Accuracy(test_hits, 72), "new_test": iclevr_accuracy.Accuracy(new_hits, 84)}
    return guidance.GuidanceRun(w, {}, scores)


def test_the_hand_in_sampler_confirms_the_sweeps_best_scales_and_the_configs():
    # the numbers: a fast sampler's sweep peaks at w = 2 …
    sweep = [{"guidance_scale": w, "test": a, "new_test": a} for w, a in ((0.0, 0.09), (1.0, 0.39), (2.0, 0.46), (4.0, 0.22))]
    assert guidance.candidate_scales(sweep, 2) == [1.0, 2.0]
    assert guidance.candidate_scales(sweep, 2, also=4.0) == [1.0, 2.0, 4.0]
    assert guidance.candidate_scales(sweep, 1, also=2.0) == [2.0]
    # … and the hand-in sampler decides, by the same number (the mean of the sets' accuracies); a tie keeps the smaller w
    assert guidance.best_run([_run(1.0, 50, 57), _run(2.0, 53, 60), _run(4.0, 52, 60)]).guidance_scale == 2.0
    assert guidance.best_run([_run(3.0, 50, 60), _run(1.5, 50, 60)]).guidance_scale == 1.5
    assert _run(2.0, 54, 63).mean == pytest.approx((54 / 72 + 63 / 84) / 2)


def test_sample_and_score_keeps_the_images_and_scores_both_sets_like_the_sweep(tmp_path, evaluator):
    cfg = config.make_config("iclevr", "smoke", image_size=16, workdir=str(tmp_path))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    schedule = diffusion.schedule_from_config(cfg)
    sets = {"test": real_labels("test.json")[:4], "new_test": real_labels("new_test.json")[:3]}
    common = dict(image_shape=(3, 16, 16), sampler="ddim", num_inference_steps=2, progress=False)
    run = guidance.sample_and_score(model, schedule, evaluator, sets, 2.0, num_frames=3, **common)
    assert {n: tuple(s.images.shape) for n, s in run.samples.items()} == {"test": (4, 3, 16, 16), "new_test": (3, 3, 16, 16)}
    assert len(run.samples["test"].frames) == 3
    assert [a.total for a in run.scores.values()] == [int(sets["test"].sum()), int(sets["new_test"].sum())]
    assert run.row() == guidance.guidance_sweep(model, schedule, evaluator, sets, [2.0], **common)[0]
    assert guidance.sample_and_score(model, schedule, None, sets, 2.0, **common).scores == {}   # no evaluator
    assert guidance.seconds_per_sampling_step(model, sets["test"], (3, 16, 16), repeats=1) > 0


def test_sample_and_score_and_the_sweep_sample_with_the_given_guidance_mix(tmp_path):
    cfg = config.make_config("iclevr", "smoke", image_size=16, workdir=str(tmp_path))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    schedule = diffusion.schedule_from_config(cfg)
    sets = {"test": real_labels("test.json")[:2]}
    common = dict(image_shape=(3, 16, 16), sampler="ddim", num_inference_steps=2, progress=False)
    unconditional = lambda eps_cond, eps_uncond, w: eps_uncond.float()    # whatever w, the w = 0 mix
    mixed = guidance.sample_and_score(model, schedule, None, sets, 3.0, guidance_mix=unconditional, **common)
    at_zero = guidance.sample_and_score(model, schedule, None, sets, 0.0, **common)
    torch.testing.assert_close(mixed.samples["test"].images, at_zero.samples["test"].images)
    seen = []
    spy = lambda eps_cond, eps_uncond, w: seen.append(w) or diffusion.mix_guidance(eps_cond, eps_uncond, w)
    guidance.guidance_sweep(model, schedule, None, sets, [3.0], guidance_mix=spy, **common)
    assert seen == [3.0, 3.0]                                             # two DDIM steps at w = 3
