"""Every exercise in the notebooks has a path that runs, in smoke mode, as the exercise text describes it.

Sampling exercises run as cells appended to the executed notebook (the text's own snippets); retraining
exercises run the notebook again with a ``run_name`` and must leave the hand-in files untouched.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from utils import config, diffusion, models, training

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run(name: str, tmp_path: Path, monkeypatch, extra_cells=(), **parameters) -> dict:
    """Execute notebook ``name`` in a private smoke work dir with ``parameters`` and ``extra_cells`` appended;
    return the executed notebook."""
    import papermill

    monkeypatch.setenv("DDPM_WORKDIR", str(tmp_path / "work"))
    nb = json.loads((NOTEBOOKS / name).read_text())
    for source in extra_cells:
        nb["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                            "source": source.strip("\n").splitlines(keepends=True)})
    (tmp_path / "in.ipynb").write_text(json.dumps(nb))
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.ipynb"
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False)
    return json.loads(out.read_text())


def _printed(nb: dict, cell: int) -> str:
    return "".join("".join(o.get("text", "")) for o in nb["cells"][cell]["outputs"] if o.get("output_type") == "stream")


NB01_SAMPLING_EXERCISES = [
    # 2. fast sampling: DDIM at a few step counts, timed
    '''
import time
for steps in (2, 5):
    start = time.perf_counter()
    images = diffusion.sample(result.ema_model, schedule, 25, (cfg.channels, cfg.image_size, cfg.image_size),
                              sampler="ddim", num_inference_steps=steps, seed=cfg.seed).images
    print(f"ex2 ddim {steps}: {tuple(images.shape)} in {time.perf_counter() - start:.2f} s")
viz.grid_image(images, nrow=5)
''',
    # 3. variance: σ_t² = β_t, checked against diffusers, then sampled
    '''
def p_sample_step_large(eps, t, xt, z):
    beta, abar = betas[t], alphas_cumprod[t]
    mean = (xt - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
    return mean + beta.sqrt() * z if t > 0 else mean

check_p_sample_step(p_sample_step_large, "fixed_large")
try:
    check_p_sample_step(p_sample_step_large)             # the β̃_t reference must tell them apart
except AssertionError as err:
    print("ex3 the fixed_small check refuses it:", err)
images = diffusion.sample(result.ema_model, schedule, 25, (cfg.channels, cfg.image_size, cfg.image_size),
                          sampler="ddpm", variance_type="fixed_large", seed=cfg.seed).images
print("ex3 sampled", tuple(images.shape))
''',
    # 4. EMA off, 5. clipping off
    '''
for label, net, clip in (("ex4 raw weights", result.model, True), ("ex5 no clipping", result.ema_model, False)):
    images = diffusion.sample(net, schedule, 25, (cfg.channels, cfg.image_size, cfg.image_size),
                              sampler="ddim", num_inference_steps=5, clip_sample=clip, seed=cfg.seed).images
    print(label, tuple(images.shape), bool(images.isfinite().all()))
''',
]


@pytest.mark.notebook
def test_notebook_01_exercises_run_and_experiments_leave_the_hand_in_alone(tmp_path, monkeypatch):
    nb = _run("01_mnist_ddpm.ipynb", tmp_path, monkeypatch, NB01_SAMPLING_EXERCISES)
    printed = "".join(_printed(nb, i) for i in range(len(nb["cells"]) - 3, len(nb["cells"])))
    assert "ex2 ddim 5: (25, 1, 28, 28)" in printed
    assert "ex3 the fixed_small check refuses it: t = " in printed and "ex3 sampled (25, 1, 28, 28)" in printed
    assert "ex4 raw weights (25, 1, 28, 28) True" in printed and "ex5 no clipping (25, 1, 28, 28) True" in printed

    outputs = tmp_path / "work" / ".smoke" / "outputs"
    hand_in = {p.name: p.read_bytes() for p in (outputs / "mnist").iterdir() if p.is_file()}
    # exercise 1: the cosine schedule as an experiment
    _run("01_mnist_ddpm.ipynb", tmp_path, monkeypatch, beta_schedule="squaredcos_cap_v2", run_name="cosine")
    assert (outputs / "mnist-cosine" / "result_mnist.jpg").exists()
    assert {p.name: p.read_bytes() for p in (outputs / "mnist").iterdir() if p.is_file()} == hand_in
    # … and without a run name the training cell says what to do instead of touching the hand-in run
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="beta_schedule: checkpoint has 'linear'"):
        _run("01_mnist_ddpm.ipynb", tmp_path, monkeypatch, beta_schedule="squaredcos_cap_v2")
    assert {p.name: p.read_bytes() for p in (outputs / "mnist").iterdir() if p.is_file()} == hand_in


NB03_SAMPLING_EXERCISES = [
    # 3. fast samplers, scored without writing anything
    '''
run = guidance.sample_and_score(ema, schedule, evaluator, label_sets, w, image_shape=shape, sampler="dpm",
                                       num_inference_steps=min(25, cfg.num_train_timesteps), seed=cfg.seed)   # smoke: T = 10
print("ex3", {name: acc.total for name, acc in run.scores.items()}, {name: acc.total for name, acc in hand_in.scores.items()})
''',
    # 5. new_test, image by image (the exercise's snippet)
    '''
with torch.no_grad():
    scores = evaluator(iclevr_accuracy.as_saved(samples["new_test"].images).to(device)).cpu()   # (32, 24)
missed = 0
for i, names in enumerate(new_test_lists):
    found = iclevr_accuracy.count_hits(scores[i:i + 1], label_sets["new_test"][i:i + 1])
    missed += found.total - found.hits
print("ex5 missed", missed, "of", int(label_sets["new_test"].sum()), "hand-in", hand_in.scores["new_test"].total - hand_in.scores["new_test"].hits)
''',
]


@pytest.mark.notebook
def test_notebook_03_sampling_exercises_run(tmp_path, monkeypatch):
    nb = _run("03_iclevr_cfg.ipynb", tmp_path, monkeypatch, NB03_SAMPLING_EXERCISES)
    assert "ex3 {'test': 72, 'new_test': 84} {'test': 72, 'new_test': 84}" in _printed(nb, -2)
    missed = _printed(nb, -1).split()
    assert missed[:2] == ["ex5", "missed"] and missed[2] == missed[-1] and missed[4] == "84"


def test_the_retraining_exercises_settings_build_and_change_a_finished_hand_in_run_only_by_name(tmp_path):
    """Notebook 02's exercises 3–5 and 03's exercises 2 and 6 change config fields: each builds, and on the hand-in
    run's checkpoint (finished) it is refused with the field named, so it needs the run_name it is given."""
    exercises = [("anime", "small", dict(block_out_channels=(32, 64, 128, 128))),
                 ("anime", "small", dict(attention_levels=(False, False, False, True))),
                 ("anime", "noflip", dict(hflip=False)),
                 ("anime", "fp32", dict(mixed_precision="no", max_steps=200)),
                 ("iclevr", "drop0", dict(cond_drop_prob=0.0)),
                 ("iclevr", "drop02", dict(cond_drop_prob=0.2)),
                 ("iclevr", "film", dict(resnet_time_scale_shift="scale_shift")),
                 ("iclevr", "flip", dict(hflip=True))]
    for name, run_name, settings in exercises:
        hand_in = config.make_config(name, "full", workdir=str(tmp_path))          # students run the full preset
        experiment = config.make_config(name, "full", workdir=str(tmp_path), run_name=run_name, **settings)
        assert experiment.checkpoint_dir != hand_in.checkpoint_dir
        changed = next(k for k in settings if k != "max_steps")
        if changed in hand_in.ARCHITECTURE:
            with pytest.raises(training.CheckpointError, match=changed):
                training.check_compatible(hand_in.to_dict(), dataclasses.replace(experiment, run_name=""), Path("x"))
        elif changed in hand_in.TRAINING:
            with pytest.raises(training.CheckpointError, match=f"{changed}: checkpoint has"):
                training.check_same_training(hand_in.to_dict(), experiment, Path("x/last.pt"), finished=True)


def test_notebook_03_exercise_4_a_label_channels_network_trains_and_samples_with_guidance(tmp_path):
    """The module exercise 4 describes: ConditionalUNet's interface, labels as 24 extra input planes."""
    from diffusers import UNet2DModel

    cfg = config.make_config("iclevr", "smoke", workdir=str(tmp_path), run_name="label-channels", image_size=16,
                             max_steps=2)

    class LabelChannelsUNet(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            reference = models.build_unet(cfg)
            self.unet = UNet2DModel(**{**reference.config, "in_channels": cfg.channels + cfg.num_labels})

        def forward(self, xt, timesteps, labels, drop_labels=None):
            labels = labels.to(xt)
            if drop_labels is not None:
                labels = labels * (~drop_labels.to(xt.device))[:, None].to(xt)
            planes = labels[:, :, None, None].expand(-1, -1, *xt.shape[2:])
            return self.unet(torch.cat([xt, planes], 1), timesteps).sample

    model = LabelChannelsUNet(cfg)
    schedule = diffusion.schedule_from_config(cfg)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.zeros(8, 24)
    labels[:, 0] = 1
    from utils import data

    loader = data.BatchLoader(data.ImageSet(images, labels, "drawn"), 4, seed=0)
    result = training.train(model, diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=0.5), loader,
                            cfg, progress=False)
    out = diffusion.sample(result.ema_model, schedule, 2, (3, 16, 16), sampler="ddim", num_inference_steps=2,
                           labels=labels[:2], guidance_scale=2.0, progress=False).images
    assert out.shape == (2, 3, 16, 16) and out.isfinite().all()
