"""Interactive explorers (ipywidgets) for a trained model.

The callbacks are plain functions — settings in, images and text out — tested without a browser;
``unconditional_explorer`` and ``iclevr_explorer`` only wire them to widgets.
Classifier-free guidance everywhere: ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 is
unconditional, w = 1 plain conditional, w > 1 guided.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from . import diffusion, viz
from .data import encode_labels
from .devices import model_device
from .iclevr_accuracy import as_saved

DISPLAY_PX = 256   # shown images are enlarged to about this many pixels (nearest neighbour)
MAX_OBJECTS = 3    # iCLEVR scenes hold 1 to 3 objects
GUIDANCE_HELP = ("guidance scale w: ε = ε_uncond + w·(ε_cond − ε_uncond). "
                 "w = 0 unconditional, w = 1 conditional, w > 1 guided (more faithful, less varied)")


def enlarge(image: Image.Image, size: int = DISPLAY_PX) -> Image.Image:
    """``image`` scaled by a whole factor to about ``size`` px wide, keeping its pixels sharp."""
    factor = max(1, size // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def to_png(image: Image.Image) -> bytes:
    """The PNG file bytes of ``image`` (what an ipywidgets Image shows)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- unconditional
def sample_trajectory(model, schedule: diffusion.NoiseSchedule, image_shape: tuple[int, int, int], *,
                      sampler: str = "sde-dpm", num_inference_steps: int = 50, seed: int = 0, num_frames: int = 20,
                      clip_sample: bool = True) -> diffusion.SampleResult:
    """One sample (``image_shape`` = (C, H, W)) with ``num_frames`` snapshots of x_t, noise → image."""
    return diffusion.sample(model, schedule, 1, image_shape, sampler=sampler, num_inference_steps=num_inference_steps,
                            seed=seed, num_frames=num_frames, clip_sample=clip_sample, progress=False)


def frame_view(result: diffusion.SampleResult, index: int, *, size: int = DISPLAY_PX) -> tuple[Image.Image, str]:
    """Snapshot ``index`` of the first sample, enlarged, and a caption saying where it is on the way."""
    last = len(result.frames) - 1
    t = result.frame_timesteps[index]
    where = "pure noise x_T" if index == 0 else "the finished image x_0" if index == last else f"after the step at t = {t}"
    image = viz.grid_image(result.frames[index][:1], nrow=1, padding=0)
    return enlarge(image, size), f"frame {index} of {last}: {where}"


def unconditional_explorer(model, schedule: diffusion.NoiseSchedule, image_shape: tuple[int, int, int], *,
                           sampler: str = "sde-dpm", num_inference_steps: int = 50, seed: int = 0,
                           num_frames: int = 20, clip_sample: bool = True):
    """Sampler, steps and seed → one sample; a slider scrubs its denoising trajectory. Returns the widget."""
    import ipywidgets as W

    T = schedule.num_train_timesteps
    sampler_box = W.Dropdown(options=diffusion.SAMPLERS, value=sampler, description="sampler")
    steps = W.IntSlider(value=min(num_inference_steps, T), min=1, max=T, description="steps",
                        disabled=sampler == "ddpm")
    seed_box = W.IntText(value=seed, description="seed")
    button = W.Button(description="Sample", button_style="primary")
    frame = W.IntSlider(value=0, min=0, max=0, description="frame")
    picture, caption = W.Image(format="png"), W.Label()
    state = {}

    def show_frame(_=None):
        image, text = frame_view(state["result"], frame.value)
        picture.value, caption.value = to_png(image), text

    def run(_=None):
        button.description = "Sampling…"
        state["result"] = sample_trajectory(model, schedule, image_shape, sampler=sampler_box.value,
                                            num_inference_steps=steps.value, seed=seed_box.value,
                                            num_frames=num_frames, clip_sample=clip_sample)
        frame.max = len(state["result"].frames) - 1
        frame.value = frame.max
        show_frame()
        button.description = "Sample"

    def on_sampler(change):
        steps.disabled = change.new == "ddpm"   # Algorithm 2 always takes all T steps

    sampler_box.observe(on_sampler, "value")
    frame.observe(show_frame, "value")
    button.on_click(run)
    run()
    hint = W.Label(f"ddpm = Algorithm 2 with all T = {T} steps; ddim / dpm / sde-dpm = fast, with 'steps' steps")
    return W.VBox([W.HBox([sampler_box, steps, seed_box, button]), hint, frame, picture, caption])


# ----------------------------------------------------------------------------- iCLEVR
def toggle_object(chosen: list[str], name: str) -> tuple[list[str], str]:
    """Add ``name`` to the chosen objects, or remove it if chosen; a fourth object is refused with a message."""
    if name in chosen:
        return [n for n in chosen if n != name], ""
    if len(chosen) >= MAX_OBJECTS:
        return list(chosen), (f"At most {MAX_OBJECTS} objects per scene: {', '.join(chosen)} are chosen. "
                              f"Click one of them to remove it before adding {name}.")
    return [*chosen, name], ""


def top_predictions(evaluator, image: torch.Tensor, objects: dict[str, int], k: int = 5) -> list[tuple[str, float]]:
    """The evaluator's ``k`` highest-scoring objects for one image (1, 3, 64, 64) in [-1, 1], as (name, score)."""
    names = {index: name for name, index in objects.items()}
    with torch.inference_mode():
        scores = evaluator(as_saved(image).to(model_device(evaluator))).cpu()[0]   # (24,) in (0, 1)
    top = scores.topk(k)
    return [(names[int(i)], float(s)) for s, i in zip(top.values, top.indices)]


def describe_predictions(predictions: list[tuple[str, float]], chosen: list[str]) -> str:
    """The predictions as lines ``✓ red sphere 0.97``, and how many chosen objects are in the top-k (k = number chosen)."""
    top_k = {name for name, _ in predictions[:len(chosen)]}
    found = sum(name in top_k for name in chosen)
    lines = [f"{'✓' if name in chosen else ' '} {name:16s} {score:.2f}" for name, score in predictions]
    return "\n".join([f"evaluator: {found} of {len(chosen)} chosen objects in its top {len(chosen)}", *lines])


def generate_scene(model, schedule: diffusion.NoiseSchedule, image_shape: tuple[int, int, int], chosen: list[str],
                   objects: dict[str, int], *, guidance_scale: float = 2.0, sampler: str = "sde-dpm",
                   num_inference_steps: int = 50, seed: int = 0, evaluator=None, clip_sample: bool = True,
                   size: int = DISPLAY_PX) -> tuple[Image.Image | None, str]:
    """One scene with the ``chosen`` objects at guidance scale w, enlarged, and a text: the evaluator's
    top predictions when there is an evaluator. No image, only a message, for 0 or more than 3 objects."""
    if not 1 <= len(chosen) <= MAX_OBJECTS:
        return None, f"Choose 1 to {MAX_OBJECTS} objects; {len(chosen)} are chosen."
    labels = encode_labels([chosen], objects)                                     # (1, 24) multi-hot
    images = diffusion.sample(model, schedule, 1, image_shape, sampler=sampler, num_inference_steps=num_inference_steps,
                              labels=labels, guidance_scale=guidance_scale, seed=seed, clip_sample=clip_sample,
                              progress=False).images                              # (1, 3, 64, 64) in [-1, 1]
    text = f"{', '.join(chosen)} · w = {guidance_scale:g} · {sampler} · seed {seed}\n"
    if evaluator is None:
        text += "no evaluator checkpoint: put the course's checkpoint.pth in data_dir to see its predictions"
    else:
        text += describe_predictions(top_predictions(evaluator, images, objects), chosen)
    return enlarge(viz.grid_image(images, nrow=1, padding=0), size), text


def iclevr_explorer(model, schedule: diffusion.NoiseSchedule, image_shape: tuple[int, int, int],
                    objects: dict[str, int], *, evaluator=None, guidance_scale: float = 2.0, sampler: str = "sde-dpm",
                    num_inference_steps: int = 50, seed: int = 0, chosen: tuple[str, ...] = (),
                    clip_sample: bool = True):
    """Pick up to three of the 24 objects, set w, generate; the evaluator's top predictions beside the image."""
    import ipywidgets as W

    state = {"chosen": list(chosen)}
    names = sorted(objects, key=objects.get)                       # objects.json order: 8 colors × 3 shapes
    buttons = {name: W.ToggleButton(value=name in chosen, description=name, layout=W.Layout(width="auto"))
               for name in names}
    w_slider = W.FloatSlider(value=guidance_scale, min=0.0, max=8.0, step=0.25, description="w")
    sampler_box = W.Dropdown(options=diffusion.SAMPLERS, value=sampler, description="sampler")
    steps = W.IntSlider(value=min(num_inference_steps, schedule.num_train_timesteps), min=1,
                        max=schedule.num_train_timesteps, description="steps")
    seed_box = W.IntText(value=seed, description="seed")
    button = W.Button(description="Generate", button_style="primary")
    message, picture, text = W.Label(), W.Image(format="png"), W.HTML()

    def on_toggle(change):
        name = change.owner.description
        if (name in state["chosen"]) == change.new:    # already in that state (a refused click being undone)
            return
        state["chosen"], message.value = toggle_object(state["chosen"], name)
        change.owner.value = name in state["chosen"]

    def run(_=None):
        button.description = "Generating…"
        image, caption = generate_scene(model, schedule, image_shape, state["chosen"], objects,
                                        guidance_scale=w_slider.value, sampler=sampler_box.value,
                                        num_inference_steps=steps.value, seed=seed_box.value,
                                        evaluator=evaluator, clip_sample=clip_sample)
        if image is not None:
            picture.value = to_png(image)
        text.value = f"<pre>{caption}</pre>"
        button.description = "Generate"

    for toggle in buttons.values():
        toggle.observe(on_toggle, "value")
    button.on_click(run)
    if state["chosen"]:
        run()
    picker = W.GridBox(list(buttons.values()), layout=W.Layout(grid_template_columns="repeat(8, auto)"))
    return W.VBox([W.Label(f"Objects (1 to {MAX_OBJECTS}):"), picker, message, W.Label(GUIDANCE_HELP),
                   W.HBox([w_slider, sampler_box]), W.HBox([steps, seed_box, button]), W.HBox([picture, text])])
