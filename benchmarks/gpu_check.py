"""The prepared GPU check: training images/s of the CIFAR-sized UNet in fp32 against bf16 mixed precision.

    python -m benchmarks.gpu_check [--batch 128] [--no-compile] [--out DIR]

Part 1, the CIFAR-sized model (conf/model/unet_cifar.yaml, 32x32x3, synthetic data on the device):
variants fp32, fp32+TF32, bf16 autocast, bf16 + channels_last, bf16 + torch.compile, visited
round-robin (rounds x steps each) so clock and thermal drift hit them alike; images/s, peak memory,
achieved TFLOP/s against the measured bf16 matmul TFLOP/s.
Part 2, the pipeline on the GPU: the default model at 32x32 and batch 256 with `trainer=gpu`
(bf16-mixed) through the same interleaved Lightning-vs-bare measurement as the CPU benchmark.
Part 3, sampling: images/s of the pipeline's own `ClassConditionalPipeline` at the default sampler
settings (conf/sampler: steps, guidance), 10k images in batches of 1000, on the default model.
`--variants` picks part 1's variants; `bf16_compile_max_autotune` (`torch.compile(mode="max-autotune")`,
CUDA graphs included) is not among the defaults, since its autotuning takes minutes. Every variant
reports its share of the measured bf16 matmul rate.

Needs a CUDA build of torch (the project's lock installs the CPU wheel). Without a CUDA device it
prints why and exits 0. Writes gpu_results.json into --out ($OUT when set, else benchmarks/out/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

if not __package__:  # run as a script (python benchmarks/gpu_check.py): the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Figure, load_config, synthetic_split, table  # noqa: E402
from benchmarks.training_overhead import matmul_flops, measure, sync  # noqa: E402
from diffaudit.data.store import DataMeta  # noqa: E402
from diffaudit.diffusion.pipeline import ClassConditionalPipeline  # noqa: E402
from diffaudit.diffusion.schedulers import build_noise_scheduler  # noqa: E402
from diffaudit.models.unet import build_unet  # noqa: E402

VARIANTS = ("fp32", "fp32_tf32", "bf16", "bf16_channels_last", "bf16_compile", "bf16_compile_max_autotune")
DEFAULT_VARIANTS = VARIANTS[:-1]


class Variant:
    """One UNet + AdamW training step configuration on the GPU."""

    def __init__(
        self, name: str, batch: int, device: torch.device, model: str = "unet_cifar", size: int = 32
    ) -> None:
        cfg = load_config([f"model={model}"])
        self.name, self.batch, self.device = name, batch, device
        self.bf16 = name.startswith("bf16")
        self.tf32 = name == "fp32_tf32"
        self.cl = torch.channels_last if "channels_last" in name else torch.contiguous_format
        torch.manual_seed(0)
        unet = build_unet(cfg.model, size, 3, 10).to(device).train().to(memory_format=self.cl)
        self.params = list(unet.parameters())
        mode = "max-autotune" if name.endswith("max_autotune") else None  # autotuned kernels + CUDA graphs
        self.unet: Callable[..., Any] = torch.compile(unet, mode=mode) if "compile" in name else unet
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, fused=device.type == "cuda")
        self.alphas = build_noise_scheduler(cfg.diffusion).alphas_cumprod.to(device)
        self.x0 = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).to(memory_format=self.cl)
        self.labels = torch.arange(batch, device=device) % 11

    def loss(self) -> torch.Tensor:
        t = torch.randint(0, len(self.alphas), (self.batch,), device=self.device)
        noise = torch.randn_like(self.x0)
        a = self.alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * self.x0 + (1 - a).sqrt() * noise
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.unet(x_t, t, class_labels=self.labels).sample
        return F.mse_loss(out.float(), noise)

    def steps(self, n: int) -> float:
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            loss = self.loss()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
            self.opt.step()
        sync(self.device)
        return time.perf_counter() - t0

    def flops(self) -> int:
        with FlopCounterMode(display=False) as counter:
            self.loss().backward()
        self.opt.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def cifar_throughput(
    device: torch.device,
    batch: int,
    steps: int,
    rounds: int,
    compile_: bool,
    model: str = "unet_cifar",
    size: int = 32,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
) -> dict[str, Any]:
    """Round-robin images/s of the variants (warm-up, compile included, outside the timing)."""
    names = [v for v in variants if compile_ or "compile" not in v]
    cuda = device.type == "cuda"
    variants, out = {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            v = Variant(name, batch, device, model, size)
            v.steps(3)  # warm-up (and compilation)
        except Exception as err:  # e.g. no triton for torch.compile: report, keep the rest
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
            continue
        variants[name] = v
        out[name] = {"warmup_s": time.perf_counter() - t0, "times": []}
    for _ in range(rounds):
        for name, v in variants.items():
            out[name]["times"].append(v.steps(steps))
    flops = Variant("fp32", batch, device, model, size).flops()
    mm = 8192 if cuda else 256
    peak_bf16 = matmul_flops(mm, device=device, dtype=torch.bfloat16)
    peak_fp32 = matmul_flops(mm, device=device, dtype=torch.float32)
    for name, v in variants.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        v.steps(1)
        best = min(out[name]["times"]) / steps
        out[name] |= {
            "s_per_step": best,
            "images_per_s": batch / best,
            "tflops": flops / best / 1e12,
            "share_of_bf16_matmul": flops / best / peak_bf16,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0,
        }
    base = out.get("fp32", {}).get("images_per_s")
    for r in out.values():
        if base and "images_per_s" in r:
            r["speedup_vs_fp32"] = r["images_per_s"] / base
    return {
        "model": model,
        "image_size": size,
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "step_flops": flops,
        "matmul_tflops_bf16": peak_bf16 / 1e12,
        "matmul_tflops_fp32": peak_fp32 / 1e12,
        "variants": out,
    }


def pipeline_on_gpu(
    steps: int, segment: int, image_size: int, batch: int, cuda: bool = True
) -> dict[str, Any]:
    """The pipeline's Lightning step (trainer=gpu, bf16-mixed) against the bare loop, interleaved."""
    trainer = ["trainer=gpu"] if cuda else ["trainer.precision=bf16-mixed"]
    cfg = load_config([*trainer, f"data.image_size={image_size}", f"train.batch_size={batch}"])
    meta = DataMeta([str(i) for i in range(10)], {}, image_size, cfg.data.channels, "synthetic")
    train, val = (
        synthetic_split(batch * 20, meta, 0),
        synthetic_split(min(512, batch * (16 if cuda else 2)), meta, 1),
    )
    return measure(cfg, train, val, meta, steps, segment, mlflow_logger=True)


def sampling_throughput(device: torch.device, n: int, batch: int) -> dict[str, Any]:
    """Images/s of the pipeline's sampling at the default sampler settings, on the default model (random
    weights: the cost does not depend on them), after a warm-up batch."""
    cfg = load_config([])
    torch.manual_seed(0)
    unet = build_unet(cfg.model, cfg.data.image_size, cfg.data.channels, 10).to(device).eval()
    pipe = ClassConditionalPipeline.from_unet(unet, build_noise_scheduler(cfg.diffusion), cfg.sampler.name)
    guidance = pipe.guidance(cfg.sampler.guidance_scale)

    def draw(count: int) -> float:
        labels = torch.arange(count) % 10
        sync(device)
        t0 = time.perf_counter()
        pipe(
            labels=labels,
            seeds=range(count),
            num_inference_steps=cfg.sampler.steps,
            guidance_scale=guidance,
            batch_size=batch,
        )
        sync(device)
        return time.perf_counter() - t0

    draw(min(n, batch))  # warm-up: cuDNN's algorithm search, allocator
    seconds = draw(n)
    return {
        "sampler": cfg.sampler.name,
        "steps": cfg.sampler.steps,
        "guidance_scale": guidance,
        "image_size": cfg.data.image_size,
        "images": n,
        "batch": batch,
        "seconds": seconds,
        "images_per_s": n / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile variant (compiling takes minutes)"
    )
    p.add_argument("--pipeline-steps", type=int, default=60, help="Lightning steps of part 2 (0 skips it)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or Path(__file__).parent / "out"))
    p.add_argument("--model", default="unet_cifar", help="conf/model entry of part 1")
    p.add_argument("--image-size", type=int, default=32, help="image size of part 1 (3 channels)")
    p.add_argument("--pipeline-batch", type=int, default=256, help="batch of part 2 (the default model)")
    p.add_argument("--pipeline-image-size", type=int, default=32, help="image size of part 2")
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS), help="part 1's variants"
    )
    p.add_argument("--sample-images", type=int, default=10_000, help="images of part 3 (0 skips it)")
    p.add_argument("--sample-batch", type=int, default=1000, help="batch of part 3")
    p.add_argument(
        "--cpu", action="store_true", help="run on the CPU anyway (tests the script on tiny sizes)"
    )
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print(
            f"[gpu_check] no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}): "
            "nothing to measure. Run it on a GPU machine with a CUDA build of torch."
        )
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(f"[gpu_check] {result['device']}, torch {torch.__version__}", flush=True)
    result["cifar"] = cifar_throughput(
        device,
        args.batch,
        args.steps,
        args.rounds,
        not args.no_compile,
        args.model,
        args.image_size,
        tuple(args.variants),
    )
    if args.sample_images:
        try:
            result["sampling"] = sampling_throughput(device, args.sample_images, args.sample_batch)
        except Exception as err:  # keep part 1's figures
            result["sampling"] = {"error": f"{type(err).__name__}: {err}"}
    if args.pipeline_steps:
        try:
            result["pipeline"] = pipeline_on_gpu(
                args.pipeline_steps,
                min(10, max(1, args.pipeline_steps // 4)),
                args.pipeline_image_size,
                args.pipeline_batch,
                cuda,
            )
        except Exception as err:  # keep part 1's figures
            result["pipeline"] = {"error": f"{type(err).__name__}: {err}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    figs = []
    c = result["cifar"]
    for name, r in c["variants"].items():
        if "error" in r:
            figs.append(Figure(f"cifar {name}", None, note=r["error"][:80]))
        else:
            figs.append(
                Figure(
                    f"cifar {name} images/s",
                    r["images_per_s"],
                    "img/s",
                    note=f"x{r.get('speedup_vs_fp32', 0):.2f} vs fp32, {r['tflops']:.1f} TFLOP/s "
                    f"({r['share_of_bf16_matmul']:.0%} of bf16 matmul), {r['peak_mem_gib']:.1f} GiB",
                )
            )
    figs.append(Figure("bf16 matmul peak", c["matmul_tflops_bf16"], "TFLOP/s"))
    pl = result.get("pipeline", {})
    if "training_overhead_ratio" in pl:
        figs.append(
            Figure(
                "gpu training_overhead_ratio (bf16)",
                pl["training_overhead_ratio"],
                "x",
                "<= 1.05",
                pl["training_overhead_ratio"] <= 1.05,
                f"default model {pl['image_size']}x{pl['image_size']}, batch {pl['batch_size']}",
            )
        )
        figs.append(Figure("gpu pipeline images/s", pl["lightning_images_per_s"], "img/s"))
    elif pl:
        figs.append(Figure("gpu pipeline", None, note=pl.get("error", "")[:80]))
    sm = result.get("sampling", {})
    if "images_per_s" in sm:
        figs.append(
            Figure(
                "sampling images/s",
                sm["images_per_s"],
                "img/s",
                note=f"{sm['images']} images, batch {sm['batch']}, {sm['sampler']} {sm['steps']} steps, "
                f"guidance {sm['guidance_scale']:g}, {sm['image_size']}x{sm['image_size']}, "
                f"{sm['seconds']:.1f} s",
            )
        )
    elif sm:
        figs.append(Figure("sampling", None, note=sm.get("error", "")[:80]))
    print(table(figs))
    print(f"[gpu_check] results in {args.out / 'gpu_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
