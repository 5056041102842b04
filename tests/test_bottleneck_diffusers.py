"""Bottleneck Sampling on real diffusers pipelines (tiny, randomly initialised, CPU) and the Fix wiring."""
from __future__ import annotations

import pytest
import torch

try:
    import diffusers  # noqa: F401
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    FluxPipeline.__init__  # the dummy object raises only when built; build one to be sure below
except Exception as exc:  # ImportError, or diffusers' own missing-backend errors
    pytest.skip(f"diffusers (with transformers) is not installed: {exc}; pip install -e .[diffusers]",
                allow_module_level=True)

from stallscope.fixes.base import Target, registered_fixes
from stallscope.fixes.bottleneck_sampling.diffusers_adapter import is_patched, patch_pipeline, unpatch_pipeline, why_not
from stallscope.fixes.bottleneck_sampling.sampler import BottleneckRefused
from stallscope.fixes.bottleneck_sampling.schedule import TUNED_SCHEDULE, BottleneckSchedule, Stage


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: OpenMP barriers cost more than a second thread gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae() -> "AutoencoderKL":
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        layers_per_block=1, shift_factor=0.1, scaling_factor=0.4,
    )


def tiny_flux() -> "FluxPipeline":
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(), text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


try:
    tiny_flux()
except ImportError as exc:
    pytest.skip(f"diffusers pipelines need transformers: {exc}", allow_module_level=True)

EMB = dict(prompt_embeds=torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(3)),
           pooled_prompt_embeds=torch.randn(1, 32, generator=torch.Generator().manual_seed(4)))


def flux_call(pipe, **kw):
    args = dict(EMB, height=64, width=64, output_type="latent", generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return pipe(**args).images


def record_tokens(pipe) -> tuple[list, object]:
    seen: list = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(tuple(k["hidden_states"].shape)), with_kwargs=True)
    return seen, handle


def test_single_stage_schedule_reproduces_the_original_pipeline() -> None:
    pipe = tiny_flux()
    ref = flux_call(pipe, num_inference_steps=10)
    patch_pipeline(pipe, BottleneckSchedule(stages=(Stage(1.0, 10, 1.0, 0.0),)), min_native_px=0)
    got = flux_call(pipe)
    # same packing, position ids, timestep scaling, guidance and shifted sigma grid as diffusers' own loop
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)


def test_staged_flux_runs_low_resolution_middle_stage() -> None:
    pipe = tiny_flux()
    ref_img = flux_call(pipe, num_inference_steps=4, output_type="np")
    patch_pipeline(pipe, min_native_px=0)
    seen, hook = record_tokens(pipe)
    img = flux_call(pipe, output_type="np")
    hook.remove()
    assert img.shape == ref_img.shape and bool(torch.isfinite(torch.as_tensor(img)).all())
    # 64 px / vae 2 -> 32x32 latent -> 16x16 = 256 packed tokens; the middle stage 8x8 = 64 tokens
    assert [s[1] for s in seen] == [256] * 4 + [64] * 13 + [256] * 8
    assert all(s[2] == 16 for s in seen)


def test_guard_refuses_below_native_resolution() -> None:
    pipe = tiny_flux()
    patch_pipeline(pipe)  # FLUX's native minimum is 512 px: a 64 px request would run at 32 px
    seen, hook = record_tokens(pipe)
    with pytest.raises(BottleneckRefused) as info:
        flux_call(pipe)
    hook.remove()
    msg = str(info.value)
    assert "\n" not in msg and "32x32 px" in msg and "512x512 px" in msg
    assert seen == []


def test_unsupported_arguments_and_pipelines_are_refused() -> None:
    pipe = tiny_flux()
    patch_pipeline(pipe, min_native_px=0)
    with pytest.raises(ValueError, match="callback_on_step_end"):
        flux_call(pipe, callback_on_step_end=lambda *a: {})
    with pytest.raises(ValueError, match="already patched"):
        patch_pipeline(pipe)

    class NotAPipeline:
        transformer = object()
        scheduler = object()

    assert "not a supported" in why_not(NotAPipeline())
    other = tiny_flux()
    other.scheduler = diffusers.DDIMScheduler()
    assert "FlowMatchEulerDiscreteScheduler" in why_not(other)


def test_fix_applies_to_one_instance_and_reverts() -> None:
    cls = registered_fixes(["bottleneck-sampling"])["bottleneck-sampling"]
    assert cls.scope == "pipeline"
    fix = cls(min_native_px=0)
    pipe, bystander = tiny_flux(), tiny_flux()
    before = flux_call(pipe, num_inference_steps=6)
    params = {n: p for n, p in pipe.transformer.named_parameters()}
    targets = fix.find_targets(pipe)
    assert [t.kind for t in targets] == ["pipeline"] and fix.why_not(targets[0]) is None
    assert fix.find_targets(pipe.transformer) == []  # a module is not a pipeline
    handle = fix.apply(targets[0])
    assert is_patched(pipe) and not is_patched(bystander) and type(bystander) is FluxPipeline
    assert FluxPipeline.__call__ is type(bystander).__call__  # the class itself is untouched
    seen, hook = record_tokens(pipe)
    flux_call(pipe)
    hook.remove()
    assert len(seen) == TUNED_SCHEDULE.total_steps and {s[1] for s in seen} == {256, 64}
    assert fix.why_not(targets[0])  # patched twice: refused
    record = fix.verify(handle)
    assert record["passed"] and record["quality_ratio"] >= 0.9
    fix.revert(handle)
    assert type(pipe) is FluxPipeline and not is_patched(pipe)
    assert all(p is params[n] for n, p in pipe.transformer.named_parameters())
    assert torch.equal(flux_call(pipe, num_inference_steps=6), before)


def test_fix_verify_flags_a_schedule_that_loses_quality() -> None:
    cls = registered_fixes(["bottleneck-sampling"])["bottleneck-sampling"]
    crude = BottleneckSchedule(stages=(Stage(1.0, 1, 1.0, 0.9), Stage(0.5, 4, 0.9, 0.2), Stage(1.0, 2, 0.2, 0.0)))
    fix = cls(schedule=crude, min_native_px=0)
    pipe = tiny_flux()
    handle = fix.apply(Target("pipe", pipe, "pipeline"))
    record = fix.verify(handle)
    fix.revert(handle)
    assert not record["passed"] and record["quality_ratio"] < 0.9


def test_sd3_pipeline_runs_staged() -> None:
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=torch.randn(1, 7, 32), pooled_prompt_embeds=torch.randn(1, 32),
              negative_prompt_embeds=torch.randn(1, 7, 32), negative_pooled_prompt_embeds=torch.randn(1, 32),
              height=64, width=64, output_type="latent", guidance_scale=3.0)
    ref = pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    patch_pipeline(pipe, min_native_px=0)
    seen, hook = record_tokens(pipe)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    hook.remove()
    assert out.shape == ref.shape and bool(torch.isfinite(out).all())
    # classifier-free guidance doubles the batch; 32x32 latent, then 16x16, then 32x32 again
    assert [s[-2:] for s in seen] == [(32, 32)] * 4 + [(16, 16)] * 13 + [(32, 32)] * 8
    assert all(s[0] == 2 for s in seen)
    unpatch_pipeline(pipe)
    assert type(pipe) is StableDiffusion3Pipeline


def test_true_cfg_matches_the_original_and_doubles_calls() -> None:
    pipe = tiny_flux()
    neg = dict(negative_prompt_embeds=torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(5)),
               negative_pooled_prompt_embeds=torch.randn(1, 32, generator=torch.Generator().manual_seed(6)),
               true_cfg_scale=2.5)
    ref = flux_call(pipe, num_inference_steps=4, **neg)
    patch_pipeline(pipe, BottleneckSchedule(stages=(Stage(1.0, 4, 1.0, 0.0),)), min_native_px=0)
    seen, hook = record_tokens(pipe)
    got = flux_call(pipe, **neg)
    hook.remove()
    assert len(seen) == 8 and torch.allclose(got, ref, atol=1e-5)
