"""Stage explain: how the model reaches an image (filmstrips, emergence and commitment, guidance maps,
attributions, loss by timestep, coarse-to-fine spectrum); writes metrics/explain.json and plots/explain/."""

from __future__ import annotations

from diffaudit.audit.explain import explain_model
from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.layout import Layout
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import write_result
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.utils.images import save_gif
from diffaudit.utils.io import write_text, write_with
from pipelines._stage import run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    data_dir, model_dir, evaluator_dir = layout.prepared, layout.diffusion, layout.evaluator
    # Image outputs live in their own folder (one DVC out); the CSVs beside it are DVC plots.
    fig_dir = layout.explain_plots
    tables = {"emergence": layout.explain_emergence_csv, "loss_by_timestep": layout.explain_loss_csv}
    with stage_run(cfg, "explain", {"model": model_dir, "evaluator": evaluator_dir, "data": data_dir}):
        meta = load_meta(data_dir)
        pipe = ClassConditionalPipeline.from_exported(model_dir, cfg.sampler.name)
        result = explain_model(
            cfg.explain,
            cfg.sampler,
            cfg.seed,
            pipe,
            Evaluator.from_pretrained(evaluator_dir, use_safetensors=True),
            meta,
            load_split(data_dir, "val"),
        )
        for name, fig in result.figures.items():
            write_with(fig_dir / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        for name, frames in result.gifs.items():
            save_gif(frames, fig_dir / f"{name}.gif", duration_ms=cfg.explain.gif_frame_ms)
        for name, text in result.tables.items():
            write_text(tables[name], text)
        write_result(layout.explain, result.metrics)
        log_outputs(
            metrics=result.metrics.dump(exclude={"sampler"}),
            prefix="explain.",
            files=[layout.explain],
            folders={"explain": fig_dir},
            # per-step curves (x axis: the sampling step)
            curves={f"explain.step.{name}": dict(enumerate(v)) for name, v in result.step_metrics.items()},
        )
        log_outputs(files=tables.values(), artifact_path="explain")
        m = result.metrics
        c, delta = m.commitment.per_head["class"], m.attribution.ig_convergence_delta
        print(
            f"[explain] {m.num_images} trajectories; class commits at step {c.mean:.1f}/"
            f"{cfg.sampler.steps} on average; IG max |delta| {delta.max_abs:.3g}; {m.seconds.total:.0f}s"
        )


if __name__ == "__main__":
    run("explain", main)
