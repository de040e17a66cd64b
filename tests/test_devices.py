"""Devices and precision: every helper follows the model's device, host and device tensors never meet,
and "auto" precision picks what each GPU computes natively.

``DEVICE`` is ``config.pick_device()``: the stand-in accelerator of ``utils.standin`` under ``make test``
(host and device are different places even on this CPU), the real GPU under ``make gpu-check``.
The tests hold on both: each puts a model on DEVICE and hands the helper tensors from the host.
"""

import contextlib
import os
import types

import pytest
import torch

from utils import (compare, config, data, devices, diffusion, fid, fixtures, gan, guidance, iclevr_accuracy, models, monitor, standin,
                   training, widgets)
from utils.data import iclevr

DEVICE = config.pick_device()
needs_device = pytest.mark.skipif(DEVICE.type == "cpu", reason="host and device are one place on a CPU run")
OBJECTS = iclevr.load_objects(iclevr.BUNDLED_LABELS / "objects.json")
LABELS = iclevr.encode_labels([["red sphere"], ["cyan cube", "gray cylinder"],
                               ["blue cube", "green sphere", "yellow cylinder"]], OBJECTS)   # (3, 24), on the host


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    """A tiny conditional U-Net (iCLEVR smoke preset, linear schedule, T = 50) on DEVICE, and its schedule."""
    cfg = config.make_config("iclevr", "smoke", workdir=str(tmp_path_factory.mktemp("iclevr")),
                             num_train_timesteps=50, beta_schedule="linear")
    torch.manual_seed(0)
    return models.build_model(cfg).to(DEVICE), diffusion.schedule_from_config(cfg), cfg


@pytest.fixture(scope="module")
def evaluator_on_device(tmp_path_factory):
    checkpoint = fixtures.write_evaluator_fixture(tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")
    return iclevr_accuracy.load_evaluator(checkpoint, DEVICE)


def _host_images(n, size=64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


# ----------------------------------------------------------------------------- the mechanism
@needs_device
def test_a_model_left_on_the_host_refuses_a_batch_on_the_device(tiny_cfg):
    """Notebook 01's old first training cell: the model built on the CPU, the loader's batch on the device."""
    model = models.build_model(tiny_cfg)                                 # forgot .to(device)
    batch = torch.randn(2, 1, 28, 28, device=DEVICE)
    with pytest.raises(RuntimeError, match="same device|device"):
        model(batch, torch.zeros(2, dtype=torch.long, device=DEVICE))


@needs_device
def test_what_cuda_allows_across_devices_is_allowed():
    x = torch.arange(6.0).view(2, 3).to(DEVICE)
    assert (x * torch.tensor(2.0)).device == x.device                    # a 0-dim host scalar
    assert x[torch.tensor([1])].cpu().tolist() == [[3.0, 4.0, 5.0]]      # host indices into a device tensor
    assert x.sum().item() == 15.0 and f"{x.sum():.1f}" == "15.0" and x.tolist()[0] == [0.0, 1.0, 2.0]
    host = torch.zeros(2, 3)
    host.copy_(x)                                                        # copies cross devices
    assert host[1, 2] == 5.0 and x.to("cpu").device.type == "cpu"


@needs_device
def test_what_cuda_refuses_is_refused():
    x = torch.ones(2, 3, device=DEVICE)
    with pytest.raises((TypeError, RuntimeError), match="numpy|cpu"):
        x.numpy()
    with pytest.raises(RuntimeError, match="same device|device"):
        x + torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="indices|device"):
        torch.ones(3)[torch.tensor([0], device=DEVICE)]


@needs_device
def test_what_cuda_refuses_beyond_elementwise_scalars_is_refused():
    x = torch.ones(3, device=DEVICE)
    with pytest.raises(RuntimeError, match="same device|device"):
        torch.stack([x.sum(), torch.tensor(1.0)])         # a 0-dim host tensor outside an elementwise op
    with pytest.raises(RuntimeError, match="same device|device"):
        x[torch.tensor([0, 1])] = torch.zeros(2)          # host values into a device tensor
    with pytest.raises(RuntimeError, match="generator"):
        torch.randn(3, generator=torch.Generator(), device=DEVICE)   # a host generator for device noise


@needs_device
def test_moving_a_module_keeps_its_parameter_objects_so_an_earlier_optimizer_still_works():
    net = torch.nn.Linear(3, 2)
    before = list(net.parameters())
    optimizer = torch.optim.Adam(net.parameters())
    net.to(DEVICE)
    assert all(a is b for a, b in zip(before, net.parameters())) and net.weight.device.type == DEVICE.type
    net(torch.ones(4, 3, device=DEVICE)).sum().backward()
    optimizer.step()
    assert net.weight.grad.device.type == DEVICE.type


def test_ddpm_device_overrides_the_choice(monkeypatch):
    # enable() points Accelerate at the stand-in unless told otherwise: keep this process's setting
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", os.environ.get("ACCELERATE_TORCH_DEVICE", str(DEVICE)))
    monkeypatch.setenv("DDPM_DEVICE", "cpu")
    assert config.pick_device() == torch.device("cpu")
    monkeypatch.setenv("DDPM_DEVICE", "standin")
    assert config.pick_device() == standin.enable() and config.pick_device().type == "standin"


# ----------------------------------------------------------------------------- helpers follow the model
@pytest.mark.parametrize("min_snr_gamma", [0.0, 5.0])
def test_the_loss_moves_a_host_batch_to_the_model(tiny_cfg, tiny_model, min_snr_gamma):
    model = tiny_model.to(DEVICE)
    loss_fn = diffusion.make_loss_fn(diffusion.schedule_from_config(tiny_cfg), min_snr_gamma=min_snr_gamma)
    loss = loss_fn(model, {"x0": torch.zeros(4, 1, 28, 28)})
    assert loss.device.type == DEVICE.type and torch.isfinite(loss)


def test_the_loss_moves_a_device_batch_to_a_model_on_the_host(tiny_cfg, tiny_model):
    model = tiny_model.cpu()
    batch = {"x0": torch.zeros(4, 1, 28, 28, device=DEVICE)}
    assert diffusion.make_loss_fn(diffusion.schedule_from_config(tiny_cfg))(model, batch).device.type == "cpu"


def test_the_conditional_loss_moves_host_labels(cond):
    model, schedule, _ = cond
    loss_fn = diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=0.5)
    assert torch.isfinite(loss_fn(model, {"x0": _host_images(3), "labels": LABELS}))


def test_guidance_takes_host_tensors(cond):
    model, _, _ = cond
    eps = diffusion.guided_noise(model, _host_images(3), torch.tensor([10]), LABELS, 2.0)
    assert eps.shape == (3, 3, 64, 64) and eps.dtype == torch.float32


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_every_sampler_runs_on_the_model_device_with_host_labels(cond, sampler):
    model, schedule, _ = cond
    result = diffusion.sample(model, schedule, 3, (3, 64, 64), sampler=sampler, num_inference_steps=4,
                              labels=LABELS, guidance_scale=2.0, num_frames=3, progress=False)
    assert result.images.device.type == "cpu" and all(f.device.type == "cpu" for f in result.frames)
    assert torch.isfinite(result.images).all()


def test_a_seed_draws_the_same_samples_on_the_host_and_on_the_device(tiny_cfg, tiny_model):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    kwargs = dict(sampler="ddpm", seed=7, mixed_precision="no", progress=False)
    on_device = diffusion.sample(tiny_model.to(DEVICE), schedule, 4, (1, 28, 28), **kwargs).images
    on_host = diffusion.sample(tiny_model.cpu(), schedule, 4, (1, 28, 28), **kwargs).images
    torch.testing.assert_close(on_device, on_host, atol=1e-4 if DEVICE.type != "cuda" else 5e-2, rtol=0)


def test_previews_take_host_labels(cond):
    model, schedule, cfg = cond
    watch = monitor.TrainingMonitor(cfg, schedule, labels=LABELS, guidance_scale=2.0, live=False)
    assert watch.preview(model, step=1).shape == (3, 3, 64, 64)


def test_the_evaluator_and_the_sweep_take_host_images(cond, evaluator_on_device):
    model, schedule, _ = cond
    acc = iclevr_accuracy.accuracy(evaluator_on_device, _host_images(3), LABELS)
    assert 0 <= acc.value <= 1 and acc.total == 6
    rows = guidance.guidance_sweep(model, schedule, evaluator_on_device, {"test": LABELS}, [0.0, 2.0],
                                          image_shape=(3, 64, 64), num_inference_steps=2, progress=False)
    assert [r["guidance_scale"] for r in rows] == [0.0, 2.0]


def test_the_explorer_callback_runs_with_model_and_evaluator_on_the_device(cond, evaluator_on_device):
    model, schedule, _ = cond
    image, text = widgets.generate_scene(model, schedule, (3, 64, 64), ["red sphere"], OBJECTS,
                                         num_inference_steps=2, evaluator=evaluator_on_device)
    assert image is not None and "evaluator:" in text


def test_the_dcgan_loss_and_sampler_follow_the_gan(tmp_path):
    cfg = config.make_config("dcgan_mnist", "smoke", workdir=str(tmp_path))
    model = gan.build_dcgan(cfg).to(DEVICE)
    assert torch.isfinite(gan.loss_fn(model, {"x0": torch.zeros(4, 1, 28, 28)}))
    images = gan.sample(model, 3, seed=1)
    assert images.device.type == "cpu" and images.shape == (3, 1, 28, 28)


def test_fid_features_and_nearest_neighbours_take_host_images():
    extractor = fixtures.RandomFeatures().to(DEVICE)
    images = torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8)
    features = fid.extract_features(images, extractor, batch_size=2, progress=False)
    assert features.device.type == "cpu" and features.dtype == torch.float64
    dist, idx = compare.nearest_neighbours(data.to_model(images[:2]).to(DEVICE), images)
    assert idx.tolist() == [0, 1] and dist.device.type == "cpu"


def test_the_loop_trains_a_host_model_on_device_batches(tiny_cfg):
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), tiny_cfg.batch_size, device=DEVICE)
    assert next(loader.epoch(0))["x0"].device.type == DEVICE.type
    result = training.train(models.build_model(tiny_cfg), diffusion.make_loss_fn(
        diffusion.schedule_from_config(tiny_cfg)), loader, tiny_cfg, progress=False)
    assert result.step == tiny_cfg.max_steps and devices.model_device(result.ema_model).type == DEVICE.type


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("gpu, capability, expected", [
    ("Tesla T4", (7, 5), "fp16"), ("Tesla V100", (7, 0), "fp16"),
    ("A100", (8, 0), "bf16"), ("NVIDIA L4", (8, 9), "bf16"), ("H100", (9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, gpu, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # what torch says on a T4 too
    assert devices.resolve_mixed_precision("auto", torch.device("cuda")) == expected, gpu


def test_asking_for_bf16_on_a_t4_warns_that_it_is_emulated(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.warns(UserWarning, match="emulated"):
        assert devices.resolve_mixed_precision("bf16", torch.device("cuda")) == "bf16"


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_precision_is_fp32_without_a_cuda_gpu(device):
    assert devices.resolve_mixed_precision("auto", torch.device(device)) == "no"
    assert devices.resolve_mixed_precision("fp16", torch.device(device)) == "fp16"   # asked for: given


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        devices.resolve_mixed_precision("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="mixed_precision"):
        config.make_config("mnist", "smoke", mixed_precision="float16")


def test_inference_autocast_is_off_on_the_cpu_unless_asked():
    assert isinstance(devices.autocast("cpu", "auto"), contextlib.nullcontext)
    with devices.autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_bf16_autocast_sampling_is_finite_and_close_to_fp32(cond, sampler):
    """Guided (w = 2) sampling with the network in bf16 and x_t, the guidance mix and each step in float32.

    Measured here: max |bf16 − fp32| 0.011–0.027 and mean 0.001–0.003 over the three samplers on [-1, 1]
    (one 8-bit level is 0.0078). The linear schedule keeps the check well-posed: with the cosine one's
    ᾱ_T ≈ 0, an untrained network's ε error is multiplied by 1/√ᾱ_T in x̂_0 and every sampler is chaotic.
    """
    model, schedule, _ = cond
    cpu_model = model.cpu()
    try:
        kwargs = dict(sampler=sampler, num_inference_steps=10, labels=LABELS, guidance_scale=2.0, seed=0, progress=False)
        fp32 = diffusion.sample(cpu_model, schedule, 3, (3, 64, 64), mixed_precision="no", **kwargs).images
        bf16 = diffusion.sample(cpu_model, schedule, 3, (3, 64, 64), mixed_precision="bf16", **kwargs).images
    finally:
        model.to(DEVICE)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max() < 0.1 and (bf16 - fp32).abs().mean() < 0.01


class _FakeClock:
    """Each step advances the clock by the step time of the current thread count; ``slow_steps`` take 100× longer
    (a loss read-out with a plot, a checkpoint): the check compares medians, so they must not decide it."""

    def __init__(self, seconds_per_step: dict[int, float], slow_steps=()):
        self.now, self.seconds_per_step, self.slow_steps, self.steps = 0.0, seconds_per_step, set(slow_steps), 0

    def __call__(self) -> float:
        return self.now

    def run_step(self):
        self.now += self.seconds_per_step[torch.get_num_threads()] * (100 if self.steps in self.slow_steps else 1)
        self.steps += 1


def _run(tuner: devices.CPUThreads, clock: _FakeClock, steps: int) -> list[int]:
    used = []
    for _ in range(steps):
        tuner.tick()
        used.append(torch.get_num_threads())
        clock.run_step()
    return used


@pytest.fixture
def four_threads():
    """torch with 4 threads and no earlier decision of CPUThreads; both restored afterwards."""
    before, last = torch.get_num_threads(), devices.CPUThreads._last
    torch.set_num_threads(4)
    devices.CPUThreads._last = None
    yield
    torch.set_num_threads(before)
    devices.CPUThreads._last = last


@pytest.mark.parametrize("busy", [True, False])
def test_cpu_threads_keeps_the_faster_thread_count_and_restores_it(four_threads, busy):
    # busy: a slow outlier step inside the "fewer" window must not hide that fewer threads are faster
    clock = _FakeClock({4: 1.0, 2: 0.25} if busy else {4: 0.5, 2: 1.0}, slow_steps={3} if not busy else {9})
    with devices.CPUThreads("cpu", every=50, window=5, warmup=2, clock=clock) as tuner:
        used = _run(tuner, clock, 120)
    assert used[:2] == [4, 4]                     # warm-up steps keep the threads torch has
    assert used[2:7] == [4] * 5 and used[7:12] == [2] * 5          # the check: 5 steps with all, 5 with half
    chosen = 2 if busy else 4
    next_check = 2 + (100 if busy else 50)        # fewer threads won: twice as long until the next check
    assert set(used[12:next_check]) == {chosen}   # the faster count until the next check
    assert used[next_check:next_check + 5] == [4] * 5 and used[next_check + 5:next_check + 10] == [2] * 5
    assert tuner.switched_to_fewer == (2 if busy else 0)
    assert tuner.seconds == ({4: 1.0, 2: 0.25} if busy else {4: 0.5, 2: 1.0})   # medians: the outlier is ignored
    assert torch.get_num_threads() == 4           # restored on leaving the block


class _NeighbourLeaves(_FakeClock):
    """Busy (fewer threads faster) for the first ``busy_steps`` steps, idle (all threads faster) after."""

    def __init__(self, busy_steps: int):
        super().__init__({4: 1.0, 2: 0.25})
        self.busy_steps = busy_steps

    def run_step(self):
        if self.steps == self.busy_steps:
            self.seconds_per_step = {4: 0.5, 2: 1.0}
        super().run_step()


def test_checks_back_off_while_fewer_threads_win_and_resume_when_all_win(four_threads):
    clock = _NeighbourLeaves(busy_steps=200)
    with devices.CPUThreads("cpu", every=20, longest=80, window=2, warmup=0, clock=clock) as tuner:
        used = _run(tuner, clock, 270)
    starts = lambda threads, lo, hi: [i for i in range(lo, hi) if used[i] == threads and used[i - 1] != threads]
    # busy: the all-thread windows of the checks, 40 then 80 steps apart (doubling, capped at `longest`)
    assert used[0] == 4 and starts(4, 1, 200) == [40, 120]
    # the check at 200 finds all threads faster again: back to one every 20 steps (its fewer-thread windows)
    assert starts(2, 201, 270) == [202, 222, 242, 262]
    assert set(used[204:222]) == {4}


def test_a_recent_decision_is_reused_without_a_new_check(four_threads):
    clock = _FakeClock({4: 1.0, 2: 0.25})
    with devices.CPUThreads("cpu", every=50, window=5, warmup=2, clock=clock) as tuner:
        _run(tuner, clock, 20)
    with devices.CPUThreads("cpu", every=50, window=5, warmup=2, clock=clock) as tuner:   # e.g. sampling after training
        used = _run(tuner, clock, 100)
    # starts with the decision; the next check stays due where it was: step 2 + 2 × every of the first loop,
    # 20 steps of which ran there
    assert set(used[:82]) == {2} and used[82:87] == [4] * 5
    with devices.CPUThreads("cpu", every=50, window=5, warmup=2, remember=0.0, clock=clock) as tuner:
        assert _run(tuner, clock, 3)[2] == 4                          # too old: checks first


def test_a_decision_counts_from_the_end_of_the_loop_it_was_in_force_in(four_threads, monkeypatch):
    clock, now = _FakeClock({4: 1.0, 2: 0.25}), [0.0]
    monkeypatch.setattr(devices, "time", types.SimpleNamespace(monotonic=lambda: now[0]))   # devices' clock only
    with devices.CPUThreads("cpu", every=50, longest=50, window=5, warmup=2, clock=clock) as tuner:
        _run(tuner, clock, 40)                    # decided at step 12 (t = 0), next check due at step 52
        now[0] = 600.0                            # a long training run: the decision is 10 min old at its end
    now[0] = 630.0
    with devices.CPUThreads("cpu", every=50, longest=50, window=5, warmup=2, remember=120.0, clock=clock) as tuner:
        used = _run(tuner, clock, 20)             # 30 s after that loop ended: reused; the check is due 12 steps in
    assert set(used[:12]) == {2} and used[12:17] == [4] * 5


def test_a_chain_of_short_loops_still_checks_and_a_loop_left_mid_check_checks_first(four_threads):
    clock = _FakeClock({4: 1.0, 2: 0.25})
    kwargs = dict(every=50, longest=50, window=5, warmup=2, clock=clock)
    used = []
    for _ in range(4):                            # 4 loops of 20 steps: the check at 2, then the one due at 52
        with devices.CPUThreads("cpu", **kwargs) as tuner:
            used += _run(tuner, clock, 20)
    assert used[2:7] == [4] * 5 and set(used[12:52]) == {2} and used[52:57] == [4] * 5
    devices.CPUThreads._last = None
    with devices.CPUThreads("cpu", **kwargs) as tuner:
        _run(tuner, clock, 55)                    # decided at 12; left 3 steps into the check due at 52
    with devices.CPUThreads("cpu", **kwargs) as tuner:
        assert _run(tuner, clock, 8)[2:7] == [4] * 5   # the interrupted check runs again, right after the warm-up


def test_per_forward_ticks_once_per_call_of_the_model_and_removes_its_hook(four_threads):
    clock = _FakeClock({4: 1.0, 2: 0.25})
    model, used = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)), []
    with devices.CPUThreads.per_forward(model, every=50, window=5, warmup=2, clock=clock) as tuner:
        for _ in range(30):                       # a hand-written loop: one forward per step
            model(torch.zeros(1, 2))
            used.append(torch.get_num_threads())
            clock.run_step()
    assert used[2:7] == [4] * 5 and used[7:12] == [2] * 5 and set(used[12:]) == {2}
    assert tuner.ticks == 30 and tuner.switched_to_fewer == 1
    assert not model._forward_pre_hooks and torch.get_num_threads() == 4    # hook removed, threads restored
    with pytest.raises(NotImplementedError):     # the student edition's stub: hook and threads cleaned up all the same
        with devices.CPUThreads.per_forward(model, every=50, window=5, warmup=2, clock=clock):
            model(torch.zeros(1, 2))
            raise NotImplementedError
    assert not model._forward_pre_hooks and torch.get_num_threads() == 4
    with devices.CPUThreads.per_forward(model.to("meta")) as tuner:   # off the CPU (the model's device): inactive
        assert not tuner.active


def test_cpu_threads_does_nothing_off_the_cpu_or_with_one_thread(four_threads):
    clock = _FakeClock({4: 1.0, 2: 0.1, 1: 0.1})
    for device in (None, "meta"):
        with devices.CPUThreads(device, every=30, window=2, warmup=0, clock=clock) as tuner:
            assert set(_run(tuner, clock, 40)) == {4}
    torch.set_num_threads(1)
    with devices.CPUThreads("cpu", every=30, window=2, warmup=0, clock=clock) as tuner:
        assert set(_run(tuner, clock, 40)) == {1} and not tuner.active
