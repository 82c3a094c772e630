"""Where every artifact of a run lives, derived from `cfg.paths` and spelled nowhere else in Python
(a result file's name is its model's FILE, in diffaudit.results).

dvc.yaml spells the same paths from params.yaml (`${paths.metrics}/quality.json`), so a `paths.*`
override reaches both; tests/test_layout.py checks that DVC's resolved stages and this layout agree.
What lies inside a folder artifact is its writer's business (data/store.py for `prepared`,
models/unet.py for `diffusion`, diffusers' save_pretrained for `evaluator`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from diffaudit.config.schema import Config, PathsCfg
from diffaudit.results import (
    DataResult,
    EvaluatorResult,
    ExplainMetrics,
    FairnessResult,
    GatesResult,
    HeadlineResult,
    PrivacyResult,
    QualityResult,
    ReleaseSummary,
    SamplerStudyResult,
)


@dataclass(frozen=True)
class Layout:
    """Every artifact path of one run. Build it with `Layout.of(cfg)` (or `from_paths`)."""

    # prepare
    prepared: Path
    data_card: Path
    real_grid: Path
    # evaluator
    evaluator: Path
    evaluator_metrics: Path
    # train
    diffusion: Path
    checkpoints: Path
    train_loss: Path
    # sample
    samples_dir: Path
    samples: Path
    samples_grid: Path
    # evaluate
    quality: Path
    conditional_accuracy_csv: Path
    # sampler_study
    sampler_study: Path
    sampler_study_plots: Path
    # explain
    explain: Path
    explain_plots: Path
    explain_emergence_csv: Path
    explain_loss_csv: Path
    # audit
    fairness: Path
    privacy: Path
    gates: Path
    audit_plots: Path
    bias_amplification_csv: Path
    # report
    report_html: Path
    model_card: Path
    model_card_appendix: Path  # the card's long tables, linked from it
    release: Path
    headline: Path
    # folders the stages above write into
    metrics_dir: Path
    plots_dir: Path
    reports_dir: Path

    @classmethod
    def from_paths(cls, paths: PathsCfg) -> Layout:
        data, models, samples = Path(paths.data), Path(paths.models), Path(paths.samples)
        metrics, plots, reports = Path(paths.metrics), Path(paths.plots), Path(paths.reports)
        return cls(
            prepared=data / "prepared",
            data_card=metrics / DataResult.FILE,
            real_grid=plots / "real_grid.png",
            evaluator=models / "evaluator",
            evaluator_metrics=metrics / EvaluatorResult.FILE,
            diffusion=models / "diffusion",
            checkpoints=models / "checkpoints",
            train_loss=plots / "train_loss.csv",
            samples_dir=samples,
            samples=samples / "samples.safetensors",
            samples_grid=samples / "grid.png",
            quality=metrics / QualityResult.FILE,
            conditional_accuracy_csv=plots / "conditional_accuracy.csv",
            sampler_study=metrics / SamplerStudyResult.FILE,
            sampler_study_plots=plots / "sampler_study",
            explain=metrics / ExplainMetrics.FILE,
            explain_plots=plots / "explain",
            explain_emergence_csv=plots / "explain_emergence.csv",
            explain_loss_csv=plots / "explain_loss_by_timestep.csv",
            fairness=metrics / FairnessResult.FILE,
            privacy=metrics / PrivacyResult.FILE,
            gates=metrics / GatesResult.FILE,
            audit_plots=plots / "audit",
            bias_amplification_csv=plots / "bias_amplification.csv",
            report_html=reports / "audit.html",
            model_card=reports / "MODEL_CARD.md",
            model_card_appendix=reports / "MODEL_CARD_APPENDIX.md",
            release=reports / ReleaseSummary.FILE,
            headline=reports / HeadlineResult.FILE,
            metrics_dir=metrics,
            plots_dir=plots,
            reports_dir=reports,
        )

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        return cls.from_paths(cfg.paths)

    def as_dict(self) -> dict[str, Path]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# What each DVC stage writes (outs, metrics and plots in dvc.yaml), as Layout fields. Every stage's own
# code writes exactly these; tests/test_layout.py holds dvc.yaml to the same list.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepared", "real_grid", "data_card"),
    "evaluator": ("evaluator", "evaluator_metrics"),
    "train": ("diffusion", "checkpoints", "train_loss"),
    "sample": ("samples_dir",),
    "evaluate": ("quality", "conditional_accuracy_csv"),
    "sampler_study": ("sampler_study", "sampler_study_plots"),
    "explain": ("explain_plots", "explain", "explain_emergence_csv", "explain_loss_csv"),
    "audit": ("audit_plots", "fairness", "privacy", "gates", "bias_amplification_csv"),
    "report": ("report_html", "model_card", "model_card_appendix", "release", "headline"),
}
