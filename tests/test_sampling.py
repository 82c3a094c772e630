"""Sampling: one contract every sampler passes (shape and range, seeds, batching, guidance passes, steps,
keyword-only call), bitwise agreement with diffusers' own pipelines, guidance as one batched forward,
and the objective conversions as exact inverses."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler

from diffaudit.config.schema import DiffusionCfg, ModelCfg
from diffaudit.diffusion.parameterization import eps_from_x0, to_x0_eps, training_target
from diffaudit.diffusion.pipeline import ClassConditionalPipeline, ClassConditionalPipelineOutput
from diffaudit.diffusion.sampling import StepInfo, guided_output, sample_seeds
from diffaudit.diffusion.schedulers import EDM_SAMPLERS, SAMPLERS, build_noise_scheduler, build_sampler
from diffaudit.models.unet import build_unet, null_class

STEPS = 4


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    cfg = ModelCfg(
        block_out_channels=[16, 32],
        layers_per_block=1,
        attention=[False, False],
        norm_num_groups=8,
        dropout=0.0,
    )
    return build_unet(cfg, image_size=8, channels=1, num_classes=3).eval()


def _noise(prediction_type: str = "epsilon") -> DDPMScheduler:
    cfg = DiffusionCfg(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )
    return build_noise_scheduler(cfg)


def _pipe(unet, name: str, prediction_type: str = "epsilon") -> ClassConditionalPipeline:
    """A pipeline with sampler `name` over the UNet, trained (as far as the samplers know) as a DDPM, or as
    an EDM model for the EDM samplers: the sampler contract holds for every sampler."""
    if name in EDM_SAMPLERS:
        return ClassConditionalPipeline.from_unet(
            unet, build_noise_scheduler(DiffusionCfg(family="edm")), name
        )
    return ClassConditionalPipeline.from_unet(unet, _noise(prediction_type), name)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversions_invert_the_training_target(prediction_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    a = torch.tensor([0.9, 0.5, 0.1, 0.01])
    x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
    out = training_target(x0, noise, a, prediction_type)
    x0_hat, eps_hat = to_x0_eps(out, x_t, a, prediction_type)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)
    assert torch.allclose(eps_from_x0(x0, x_t, a), noise, atol=1e-4)


def test_guidance_is_one_batched_forward(unet) -> None:
    calls: list[int] = []
    handle = unet.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    try:
        x = torch.randn(4, 1, 8, 8)
        labels = torch.tensor([0, 1, 2, 1])
        with torch.no_grad():
            guided, cond, uncond = guided_output(unet, x, torch.tensor(500), labels, null_class(unet), 3.0)
            plain, _, none = guided_output(unet, x, torch.tensor(500), labels, null_class(unet), 1.0)
    finally:
        handle.remove()
    assert calls == [8, 4]  # conditional and unconditional together, then conditional alone
    assert none is None and torch.allclose(plain, cond, atol=1e-5)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_pipeline_owns_the_models_state(unet) -> None:
    """The prediction type is the training schedule's, whatever the sampler was configured for (Euler:
    epsilon)."""
    pipe = _pipe(unet, "euler", "v_prediction")
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.prediction_type == "v_prediction" and pipe.null_class == 3 and pipe.num_classes == 3
    ddim = pipe.with_sampler("ddim")
    assert ddim.unet is pipe.unet and ddim.noise_scheduler is pipe.noise_scheduler
    assert ddim.scheduler is not pipe.scheduler and ddim.scheduler.config.prediction_type == "v_prediction"
    assert pipe.with_sampler("euler").scheduler is not pipe.scheduler  # a fresh (stateful) scheduler per call


class TestSamplerContract:
    """Every sampler the pipeline offers, through ClassConditionalPipeline, keeps the same promises
    (after diffusers' SchedulerCommonTest: one contract, every scheduler)."""

    labels = torch.tensor([0, 1, 2, 0, 1])
    seeds = sample_seeds(3, 5)

    def _call(self, pipe: ClassConditionalPipeline, **kw: object) -> ClassConditionalPipelineOutput:
        args = {
            "labels": self.labels,
            "seeds": self.seeds,
            "num_inference_steps": STEPS,
            "guidance_scale": 2.0,
        }
        return pipe(**(args | kw))

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_output_shape_and_range(self, unet, name: str) -> None:
        out = self._call(_pipe(unet, name))
        assert isinstance(out, ClassConditionalPipelineOutput)
        assert out.images.shape == (5, 1, 8, 8) and out.images.dtype == torch.float32
        assert out.images.device.type == "cpu" and torch.isfinite(out.images).all()
        assert out.images.abs().max() <= 1.0
        assert torch.equal(out.labels, self.labels) and out.seeds == self.seeds

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_deterministic_by_seed(self, unet, name: str) -> None:
        pipe = _pipe(unet, name)
        first = self._call(pipe).images
        assert torch.equal(first, self._call(pipe).images)  # the same pipeline again
        assert torch.equal(first, self._call(pipe.with_sampler(name)).images)  # a fresh scheduler
        other = self._call(pipe, seeds=[s + 100 for s in self.seeds]).images
        assert (other - first).abs().flatten(1).amax(1).min() > 1e-3  # every image moves with its seed

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_image_does_not_depend_on_its_batch(self, unet, name: str) -> None:
        pipe = _pipe(unet, name)
        together = self._call(pipe).images
        apart = self._call(pipe, batch_size=2).images
        alone = self._call(pipe, labels=self.labels[3:4], seeds=self.seeds[3:4]).images
        # CPU kernels may round differently at another batch size: the same image to float32 noise.
        torch.testing.assert_close(apart, together, rtol=0, atol=1e-5)
        torch.testing.assert_close(alone[0], together[3], rtol=0, atol=1e-5)

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_guidance_one_skips_the_unconditional_pass(self, unet, name: str) -> None:
        pipe = _pipe(unet, name)
        runs: dict[str, tuple[list[int], list[StepInfo]]] = {}
        for key, w, with_uncond in (
            ("plain", 1.0, False),
            ("with_uncond", 1.0, True),
            ("guided", 2.0, False),
        ):
            calls: list[int] = []
            seen: list[StepInfo] = []
            handle = unet.register_forward_hook(lambda m, args, out, calls=calls: calls.append(len(args[0])))
            try:
                self._call(pipe, guidance_scale=w, with_uncond=with_uncond, on_step=seen.append)
            finally:
                handle.remove()
            runs[key] = calls, seen
        assert runs["plain"][0] == [5] * STEPS and all(s.eps_uncond is None for s in runs["plain"][1])
        for key in ("with_uncond", "guided"):
            assert runs[key][0] == [10] * STEPS and all(s.eps_uncond is not None for s in runs[key][1])

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_on_step_sees_every_step(self, unet, name: str) -> None:
        pipe = _pipe(unet, name)
        seen: list[StepInfo] = []
        images = self._call(pipe, on_step=seen.append).images
        assert [s.index for s in seen] == list(range(STEPS))
        assert torch.equal(torch.stack([s.timestep for s in seen]), pipe.scheduler.timesteps)
        for before, after in zip(seen, seen[1:], strict=False):
            assert torch.equal(after.x_t, before.prev_sample)  # consecutive: no step is hidden
        assert torch.equal(seen[-1].prev_sample.clamp(-1, 1), images)
        # x0 clipped by every sampler (float32 rounding at large Euler sigmas: 1e-2)
        assert all(s.x0_pred.abs().max() <= 1.0 + 1e-2 for s in seen)
        batched: list[StepInfo] = []
        self._call(pipe, batch_size=2, on_step=batched.append)
        assert [s.index for s in batched] == list(range(STEPS)) * 3  # every step of every batch

    @pytest.mark.parametrize("name", SAMPLERS)
    def test_call_is_keyword_only(self, unet, name: str) -> None:
        pipe = _pipe(unet, name)
        params = list(inspect.signature(pipe.__call__).parameters.values())
        assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
        with pytest.raises(TypeError):
            pipe(self.labels, self.seeds, STEPS, 2.0)  # type: ignore[misc]

    def test_bad_input_is_a_value_error(self, unet) -> None:
        pipe = _pipe(unet, "ddim")
        with pytest.raises(ValueError, match="one seed per label"):
            self._call(pipe, seeds=self.seeds[:2])
        with pytest.raises(ValueError, match="batch_size"):
            self._call(pipe, batch_size=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda unet: build_sampler("heun", dict(_noise().config)),
        lambda unet: ClassConditionalPipeline.from_unet(unet, _noise(), "heun"),
        lambda unet: _pipe(unet, "ddim").with_sampler("heun"),
        lambda unet: ClassConditionalPipeline.from_exported("/nonexistent", "heun"),  # checked before loading
    ],
    ids=["build_sampler", "from_unet", "with_sampler", "from_exported"],
)
def test_unknown_sampler_lists_the_allowed_ones(unet, make) -> None:
    with pytest.raises(ValueError, match="'heun'; allowed: ddpm, ddim, dpm_solver, euler"):
        make(unet)


class _FixedUNet(torch.nn.Module):
    """The UNet as diffusers' unconditional pipelines call it, unet(x, t).sample: class labels fixed, and
    guided the library's way when guidance_scale != 1."""

    def __init__(self, unet: torch.nn.Module, labels: torch.Tensor, guidance_scale: float) -> None:
        super().__init__()
        self.inner, self.labels, self.guidance_scale = unet, labels, guidance_scale
        self.config = unet.config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        out, _, _ = guided_output(self.inner, x, t, self.labels, null_class(self.inner), self.guidance_scale)
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
@pytest.mark.parametrize(("name", "reference"), [("ddim", DDIMPipeline), ("dpm_solver", DDPMPipeline)])
def test_bitwise_equal_to_diffusers_pipelines(
    unet, name: str, reference: type, guidance_scale: float, prediction_type: str
) -> None:
    """The deterministic samplers give diffusers' own pipelines' pixels, bit for bit, from the same
    per-image generators (DDPM draws its step noise from a stream of its own, Euler clips x0 on the way:
    not comparable)."""
    labels, seeds = torch.tensor([2, 0, 1]), [7, 8, 9]
    pipe = _pipe(unet, name, prediction_type)
    ours = pipe(labels=labels, seeds=seeds, num_inference_steps=STEPS, guidance_scale=guidance_scale).images
    ref = reference(
        unet=_FixedUNet(unet, labels, guidance_scale), scheduler=pipe.with_sampler(name).scheduler
    )
    ref.set_progress_bar_config(disable=True)
    theirs = ref(
        batch_size=3,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_inference_steps=STEPS,
        output_type="pt",
    ).images
    assert torch.equal(ours / 2 + 0.5, theirs)
