"""Models trained elsewhere (issue 13), in process and fast: what a diffusers folder is read as, every
bad input refused at compose time with a one-line error and nothing written, and the pipeline sampling
unconditional, class-conditional-without-null and latent models made with plain diffusers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.errors import ModelFolderError
from diffaudit.models.imported import folder_md5, inspect_model_folder
from diffaudit.results.applicability import UNCONDITIONAL, not_applicable
from tests.helpers import diffusers_models as dm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "uncond": dm.unconditional_pipeline(root / "uncond"),
        "cond": dm.conditional_unet_scheduler(root / "cond"),
        "latent": dm.latent_pipeline(root / "latent"),
        "latent_kl": dm.latent_pipeline(root / "latent_kl", vae="kl"),
        "rgb": dm.unconditional_pipeline(root / "rgb", channels=3),
        "v": dm.unconditional_pipeline(root / "v", prediction_type="v_prediction"),
    }


def test_folders_are_read_as_what_they_are(models: dict[str, Path]) -> None:
    u = inspect_model_folder(models["uncond"])
    assert (u.kind, u.pipeline_class, u.channels, u.image_size, u.latent) == (
        "pipeline",
        "DDPMPipeline",
        1,
        16,
        False,
    )
    assert u.conditioning(10) == "none"
    c = inspect_model_folder(models["cond"])
    assert (c.kind, c.scheduler_class, c.conditioning(10)) == ("unet_scheduler", "DDIMScheduler", "class")
    lat = inspect_model_folder(models["latent"])
    # The UNet works on 8x8 latents; the VQModel's two blocks double them to 16x16 images.
    assert (lat.latent, lat.vae_class, lat.image_size, lat.channels) == (True, "VQModel", 16, 1)
    kl = inspect_model_folder(models["latent_kl"])
    assert (kl.vae_subfolder, kl.vae_class, kl.image_size) == ("vae", "AutoencoderKL", 16)
    assert inspect_model_folder(models["v"]).prediction_type == "v_prediction"


def test_folder_md5_is_dvc_hash(models: dict[str, Path], tmp_path: Path) -> None:
    """The hash the report shows for model.path is the one dvc.lock records for that dependency."""
    from dvc_data.hashfile.hash import hash_file  # noqa: F401  (dvc's own hashing is importable)

    repo = tmp_path / "r"
    shutil.copytree(models["uncond"], repo / "m")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["dvc", "add", "-q", "m"], cwd=repo, check=True, env=env)
    dvc_md5 = (repo / "m.dvc").read_text().split("md5: ")[1].split()[0]
    assert folder_md5(repo / "m") == dvc_md5


def _compose(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    out = tmp_path / "params.yaml"
    return subprocess.run(
        [sys.executable, "-m", "pipelines.compose", "--out", str(out), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _bad(tmp_path: Path, folder: Path) -> str:
    """Compose against `folder`: exit 1, one line naming the problem, no params file written."""
    proc = _compose(tmp_path, "model.source=pretrained", f"model.path={folder}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not (tmp_path / "params.yaml").exists()
    return lines[0]


def test_not_a_diffusers_folder(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    line = _bad(tmp_path, tmp_path / "junk")
    assert "not a diffusers model" in line and "model_index.json" in line


def test_pickle_only_weights_refused_unopened(models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(models["uncond"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    # Not a real pickle: opening it would fail loudly, so passing shows it was never unpickled.
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle, never opened")
    line = _bad(tmp_path, folder)
    assert "diffusion_pytorch_model.bin" in line and "pickle" in line and "safetensors" in line


def test_channels_the_dataset_cannot_match(models: dict[str, Path], tmp_path: Path) -> None:
    line = _bad(tmp_path, models["rgb"])  # 3-channel model, 1-channel digits
    assert "3-channel" in line and "data.channels=1" in line and "unet/config.json" in line


@pytest.mark.parametrize(
    ("component", "name", "listed"),
    [
        ("scheduler/scheduler_config.json", "LMSDiscreteScheduler", "DDPMScheduler"),
        ("unet/config.json", "UNet2DConditionModel", "UNet2DModel"),
        ("model_index.json", "StableDiffusionPipeline", "DDPMPipeline"),
    ],
)
def test_unsupported_classes_name_the_supported(
    models: dict[str, Path], tmp_path: Path, component: str, name: str, listed: str
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(models["uncond"], folder)
    cfg = json.loads((folder / component).read_text())
    cfg["_class_name"] = name
    (folder / component).write_text(json.dumps(cfg))
    line = _bad(tmp_path, folder)
    assert name in line and listed in line and component.split("/")[-1] in line


def test_compose_brings_the_data_to_the_model_size(models: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    folder = tmp_path / "big"
    dm.unconditional_pipeline(folder, size=8)
    proc = _compose(tmp_path, "model.source=pretrained", f"model.path={folder}")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]
    assert (data["image_size"], data["requested_image_size"]) == (8, 16)
    assert "16 -> 8" in proc.stderr


@pytest.mark.parametrize("name", ["uncond", "cond", "latent", "latent_kl", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_pipeline_samples_every_kind(models: dict[str, Path], name: str, sampler: str) -> None:
    pipe = ClassConditionalPipeline.from_exported(models[name], sampler)
    # As the train stage records it against the dataset's 10 classes (source.json).
    conditioning = inspect_model_folder(models[name]).conditioning(10)
    pipe = ClassConditionalPipeline.from_unet(
        pipe.unet, pipe.noise_scheduler, sampler, vae=pipe.vae, conditioning=conditioning
    )
    out = pipe(labels=[0, 3, 7], seeds=[1, 2, 3], num_inference_steps=3, guidance_scale=1.0)
    assert out.images.shape == (3, *pipe.image_shape) == (3, 1, 16, 16)
    assert out.images.abs().max() <= 1.0 and torch.isfinite(out.images).all()
    again = pipe.with_sampler(sampler)(
        labels=[0, 3, 7], seeds=[1, 2, 3], num_inference_steps=3, guidance_scale=1.0
    )
    assert torch.equal(out.images, again.images)  # deterministic by seed
    if name in ("uncond", "latent", "latent_kl", "v"):
        assert not pipe.is_conditional and out.labels.tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="no null class"):
        pipe(labels=[0], seeds=[1], num_inference_steps=2, guidance_scale=2.0)


def test_unconditional_matches_plain_diffusers_ddim(models: dict[str, Path]) -> None:
    """The pipeline over an imported DDPMPipeline folder draws what diffusers' DDIMPipeline draws from the
    same starting noise (DDIM, eta 0, clipped x0, as diffaudit configures it)."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    pipe = ClassConditionalPipeline.from_exported(models["uncond"], "ddim")
    ours = pipe(labels=None, seeds=[5], num_inference_steps=4, guidance_scale=1.0).images
    unet = UNet2DModel.from_pretrained(models["uncond"] / "unet")
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    ref = DDIMPipeline(unet=unet, scheduler=sched)
    from diffaudit.diffusion.sampling import initial_noise

    noise = initial_noise([5], (1, 16, 16), torch.device("cpu"))
    sched.set_timesteps(4)
    x = noise
    for t in sched.timesteps:
        x = sched.step(ref.unet(x, t).sample, t, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-5)


def test_not_applicable_reasons() -> None:
    assert not_applicable("class_cfg") == {}
    assert set(not_applicable("class")) == {"guidance"}
    na = not_applicable("none")
    assert (
        set(na) == {"conditional_accuracy", "cas", "guidance"} and na["conditional_accuracy"] == UNCONDITIONAL
    )


def test_bad_folder_is_a_model_folder_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="not a folder"):
        inspect_model_folder(tmp_path / "missing")
