"""Run a diffusers flow-matching pipeline's denoising loop as Bottleneck Sampling.

``patch_pipeline(pipe)`` changes one pipeline object so that ``pipe(...)`` runs the staged loop:
it swaps that object's class for a one-off subclass whose ``__call__`` encodes the prompt and draws
the initial noise with the pipeline's own methods, then runs :func:`bottleneck_sample` with a
denoiser that calls ``pipe.transformer`` directly and rebuilds every size-dependent input per stage
(FLUX: 2x2 packing and the RoPE position ids; SD3: nothing, its transformer patches internally), and
finally decodes as the pipeline does. Other instances and the class itself are untouched;
``unpatch_pipeline`` restores the object's class. Supported: ``FluxPipeline`` and
``StableDiffusion3Pipeline`` (text-to-image) with ``FlowMatchEulerDiscreteScheduler``.
diffusers is optional: nothing here imports it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from .sampler import BottleneckRefused, bottleneck_sample, check_native_resolution, plan_stages
from .schedule import DEFAULT_SCHEDULE, BottleneckSchedule, ShiftRule, Stage

__all__ = ["FAMILIES", "NATIVE_MIN_PX", "is_patched", "patch_pipeline", "unpatch_pipeline", "why_not"]

FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}
# Smallest output size (pixels per side) we treat as a resolution the model was trained on. FLUX.1
# and SD3 were trained in stages up to 1024^2 from lower resolutions; 512 keeps the spec's
# "1024 -> 512 is fine" and refuses anything below. Override with ``min_native_px``.
NATIVE_MIN_PX = {"flux": 512, "sd3": 512}
_UNSUPPORTED = (
    "ip_adapter_image",
    "ip_adapter_image_embeds",
    "negative_ip_adapter_image",
    "negative_ip_adapter_image_embeds",
    "callback_on_step_end",
    "sigmas",
    "skip_guidance_layers",
    "timesteps",
)


@dataclass
class _Config:
    family: str
    schedule: BottleneckSchedule
    min_native_px: int | None
    original_class: type
    last_plan: list | None = None


def _original_class(pipe: Any) -> type:
    cfg = pipe.__dict__.get("_bottleneck")
    return cfg.original_class if cfg is not None else type(pipe)


def why_not(pipe: Any) -> str | None:
    """One line saying why this object cannot be patched, or None when it can."""
    name = _original_class(pipe).__name__
    if name not in FAMILIES:
        return f"{name} is not a supported flow-matching text-to-image pipeline ({', '.join(FAMILIES)})"
    sched = getattr(pipe, "scheduler", None)
    if type(sched).__name__ != "FlowMatchEulerDiscreteScheduler":
        return f"{name} uses {type(sched).__name__}; bottleneck sampling needs FlowMatchEulerDiscreteScheduler"
    assert sched is not None  # its class name matched
    cfg = sched.config
    for flag in (
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "invert_sigmas",
        "stochastic_sampling",
    ):
        if cfg.get(flag, False):
            return f"the scheduler sets {flag}; bottleneck sampling runs plain flow-matching Euler steps"
    if cfg.get("shift_terminal", None):
        return "the scheduler sets shift_terminal; bottleneck sampling ends every grid at sigma 0"
    if getattr(pipe, "transformer", None) is None:
        return f"{name} has no transformer"
    return None


def is_patched(pipe: Any) -> bool:
    """Whether ``pipe`` currently runs the staged loop."""
    return "_bottleneck" in pipe.__dict__


def patch_pipeline(pipe: Any, schedule: BottleneckSchedule = DEFAULT_SCHEDULE, min_native_px: int | None = None) -> Any:
    """Make ``pipe(...)`` run Bottleneck Sampling (instance-scoped; returns ``pipe``). Raises
    ``ValueError`` with the reason if the pipeline is unsupported."""
    if is_patched(pipe):
        raise ValueError("pipeline is already patched for bottleneck sampling; unpatch it first")
    reason = why_not(pipe)
    if reason:
        raise ValueError(f"bottleneck sampling cannot patch this pipeline: {reason}")
    family = FAMILIES[type(pipe).__name__]
    native = NATIVE_MIN_PX[family] if min_native_px is None else min_native_px
    original = type(pipe)
    patched = type(f"Bottleneck{original.__name__}", (original,), {"__call__": _staged_call, "__module__": __name__})
    pipe.__dict__["_bottleneck"] = _Config(family, schedule, native, original)
    pipe.__class__ = patched
    return pipe


def unpatch_pipeline(pipe: Any) -> None:
    """Undo :func:`patch_pipeline` on this object."""
    cfg = pipe.__dict__.pop("_bottleneck", None)
    if cfg is not None:
        pipe.__class__ = cfg.original_class


def _shift_rule(pipe: Any, family: str) -> tuple[ShiftRule, float | None]:
    """The scheduler's own resolution rule, and a fixed reference shift for static-shift schedulers."""
    cfg = pipe.scheduler.config
    rule = ShiftRule(
        base_tokens=int(cfg.get("base_image_seq_len", 256)),
        max_tokens=int(cfg.get("max_image_seq_len", 4096)),
        base_mu=float(cfg.get("base_shift", 0.5)),
        max_mu=float(cfg.get("max_shift", 1.15 if family == "flux" else 1.16)),
        tokens_per_position=4,
    )
    return rule, None if cfg.get("use_dynamic_shifting", False) else float(cfg.get("shift", 1.0))


def _resolve_schedule(pipe: Any, cfg: _Config, full_size: tuple[int, ...]) -> BottleneckSchedule:
    """Fill in shifts: the scheduler's dynamic rule per stage, or for a static shift ``s_ref`` (set
    for the model's default size) ``s_ref * sqrt(stage tokens / default tokens)`` (SD3's rule)."""
    rule, static = _shift_rule(pipe, cfg.family)
    sched = BottleneckSchedule(
        stages=cfg.schedule.stages,
        down=cfg.schedule.down,
        up=cfg.schedule.up,
        shift_rule=rule,
        spatial_dims=cfg.schedule.spatial_dims,
    )
    if static is None:
        return sched
    default = int(getattr(pipe, "default_sample_size", 128))
    ref_tokens = default * default / 4
    stages = []
    for p in plan_stages(full_size, sched, multiple=2):
        shift = p.stage.shift if p.stage.shift is not None else static * math.sqrt(rule.tokens(p.size) / ref_tokens)
        stages.append(Stage(p.stage.scale, p.stage.steps, p.stage.sigma_start, p.stage.sigma_end, max(shift, 1.0)))
    return BottleneckSchedule(
        stages=tuple(stages), down=sched.down, up=sched.up, shift_rule=rule, spatial_dims=sched.spatial_dims
    )


def _staged_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    cfg: _Config = self.__dict__["_bottleneck"]
    bound = inspect.signature(cfg.original_class.__call__).bind(self, *args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    a.pop("self", None)
    a.update(a.pop("kwargs", {}) or {})
    used = [k for k in _UNSUPPORTED if a.get(k) is not None]
    if used:
        raise ValueError(f"bottleneck sampling does not support {', '.join(used)}; unpatch the pipeline to use them")
    with torch.no_grad():
        return _run_flux(self, cfg, a) if cfg.family == "flux" else _run_sd3(self, cfg, a)


def _generator(gen: Any) -> torch.Generator | None:
    return gen[0] if isinstance(gen, (list, tuple)) else gen


def _guard(pipe: Any, cfg: _Config, sched: BottleneckSchedule, latent_hw: tuple[int, int], multiple: int) -> None:
    plans = plan_stages(latent_hw, sched, multiple)
    cfg.last_plan = plans
    if cfg.min_native_px:
        native_latent = max(1, cfg.min_native_px // pipe.vae_scale_factor)
        try:
            check_native_resolution(plans, native_latent, sched.spatial_dims)
        except BottleneckRefused as exc:
            px = [s * pipe.vae_scale_factor for s in min(plans, key=lambda p: math.prod(p.size)).size]
            raise BottleneckRefused(
                f"bottleneck sampling refused: its low-resolution stage would run at {px[0]}x{px[1]} px, below the "
                f"model's native {cfg.min_native_px}x{cfg.min_native_px} px; generate at >= "
                f"{2 * cfg.min_native_px} px or pass min_native_px"
            ) from exc


def _run_flux(pipe: Any, cfg: _Config, a: dict) -> Any:
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"],
        a["prompt_2"],
        height,
        width,
        negative_prompt=a.get("negative_prompt"),
        negative_prompt_2=a.get("negative_prompt_2"),
        prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a.get("negative_prompt_embeds"),
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a.get("negative_pooled_prompt_embeds"),
        max_sequence_length=a["max_sequence_length"],
    )
    pipe._guidance_scale = a["guidance_scale"]
    pipe._joint_attention_kwargs = a["joint_attention_kwargs"] or {}
    pipe._interrupt = False
    prompt = a["prompt"]
    batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else a["prompt_embeds"].shape[0]
    device = pipe._execution_device
    n_img = a["num_images_per_prompt"] or 1
    lora_scale = pipe._joint_attention_kwargs.get("scale")
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompt,
        prompt_2=a["prompt_2"],
        prompt_embeds=a["prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        device=device,
        num_images_per_prompt=n_img,
        max_sequence_length=a["max_sequence_length"],
        lora_scale=lora_scale,
    )
    has_neg = a.get("negative_prompt") is not None or (
        a.get("negative_prompt_embeds") is not None and a.get("negative_pooled_prompt_embeds") is not None
    )
    true_cfg = float(a.get("true_cfg_scale", 1.0) or 1.0)
    neg = None
    if true_cfg > 1 and has_neg:
        neg = pipe.encode_prompt(
            prompt=a.get("negative_prompt"),
            prompt_2=a.get("negative_prompt_2"),
            prompt_embeds=a.get("negative_prompt_embeds"),
            pooled_prompt_embeds=a.get("negative_pooled_prompt_embeds"),
            device=device,
            num_images_per_prompt=n_img,
            max_sequence_length=a["max_sequence_length"],
            lora_scale=lora_scale,
        )
    channels = pipe.transformer.config.in_channels // 4
    packed, _ = pipe.prepare_latents(
        batch * n_img, channels, height, width, embeds.dtype, device, a["generator"], a["latents"]
    )
    lat_h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
    lat_w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
    spatial = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([1], a["guidance_scale"], device=device, dtype=torch.float32).expand(spatial.shape[0])
    ids_cache: dict[tuple[int, int], torch.Tensor] = {}

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ids = ids_cache.get((h, w))
        if ids is None:
            ids = ids_cache[(h, w)] = pipe._prepare_latent_image_ids(b, h // 2, w // 2, device, embeds.dtype)
        tokens = pipe._pack_latents(x, b, c, h, w)
        t = (sigma * 1000).to(x.dtype) / 1000
        pipe._current_timestep = sigma[0] * 1000

        def call(e: torch.Tensor, p: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
            return pipe.transformer(
                hidden_states=tokens,
                timestep=t,
                guidance=guidance,
                pooled_projections=p,
                encoder_hidden_states=e,
                txt_ids=tid,
                img_ids=ids,
                joint_attention_kwargs=pipe._joint_attention_kwargs,
                return_dict=False,
            )[0]

        out = call(embeds, pooled, text_ids)
        if neg is not None:
            out_neg = call(*neg)
            out = out_neg + true_cfg * (out - out_neg)
        # unpack at this stage's size: _unpack_latents takes pixel sizes
        return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)

    sched = _resolve_schedule(pipe, cfg, (lat_h, lat_w))
    _guard(pipe, cfg, sched, (lat_h, lat_w), multiple=2)
    pipe._num_timesteps = sched.total_steps
    final = bottleneck_sample(denoise, spatial, sched, generator=_generator(a["generator"]), multiple=2)
    pipe._current_timestep = None
    latents = pipe._pack_latents(final, final.shape[0], final.shape[1], lat_h, lat_w)
    if a["output_type"] == "latent":
        image = latents
    else:
        lat = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        lat = (lat / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    pipe.maybe_free_model_hooks()
    if not a["return_dict"]:
        return (image,)
    from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

    return FluxPipelineOutput(images=image)


def _run_sd3(pipe: Any, cfg: _Config, a: dict) -> Any:
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"],
        a["prompt_2"],
        a["prompt_3"],
        height,
        width,
        negative_prompt=a["negative_prompt"],
        negative_prompt_2=a["negative_prompt_2"],
        negative_prompt_3=a["negative_prompt_3"],
        prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        max_sequence_length=a["max_sequence_length"],
    )
    pipe._guidance_scale = a["guidance_scale"]
    pipe._clip_skip = a.get("clip_skip")
    pipe._joint_attention_kwargs = a["joint_attention_kwargs"]
    pipe._interrupt = False
    prompt = a["prompt"]
    batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else a["prompt_embeds"].shape[0]
    device = pipe._execution_device
    cfg_on = pipe.do_classifier_free_guidance
    embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
        prompt=prompt,
        prompt_2=a["prompt_2"],
        prompt_3=a["prompt_3"],
        negative_prompt=a["negative_prompt"],
        negative_prompt_2=a["negative_prompt_2"],
        negative_prompt_3=a["negative_prompt_3"],
        do_classifier_free_guidance=cfg_on,
        prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        device=device,
        clip_skip=pipe.clip_skip,
        num_images_per_prompt=a["num_images_per_prompt"],
        max_sequence_length=a["max_sequence_length"],
    )
    if cfg_on:
        embeds = torch.cat([neg_embeds, embeds], dim=0)
        pooled = torch.cat([neg_pooled, pooled], dim=0)
    latents = pipe.prepare_latents(
        batch * a["num_images_per_prompt"],
        pipe.transformer.config.in_channels,
        height,
        width,
        embeds.dtype,
        device,
        a["generator"],
        a["latents"],
    )
    scale = float(a["guidance_scale"])

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x] * 2) if cfg_on else x
        t = (sigma * 1000).to(x.dtype)
        t = torch.cat([t] * 2) if cfg_on else t
        out = pipe.transformer(
            hidden_states=inp,
            timestep=t,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            joint_attention_kwargs=pipe._joint_attention_kwargs,
            return_dict=False,
        )[0]
        if cfg_on:
            uncond, cond = out.chunk(2)
            out = uncond + scale * (cond - uncond)
        return out

    size = tuple(latents.shape[2:])
    sched = _resolve_schedule(pipe, cfg, size)
    _guard(pipe, cfg, sched, size, multiple=int(pipe.transformer.config.patch_size))
    pipe._num_timesteps = sched.total_steps
    final = bottleneck_sample(
        denoise, latents, sched, generator=_generator(a["generator"]), multiple=int(pipe.transformer.config.patch_size)
    )
    if a["output_type"] == "latent":
        image = final
    else:
        lat = (final / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    pipe.maybe_free_model_hooks()
    if not a["return_dict"]:
        return (image,)
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

    return StableDiffusion3PipelineOutput(images=image)
