"""``cropseg-model``: the model pipeline from the command line.

    cropseg-model generate --count 100 --seed 7 --out var/data/tiles
    cropseg-model train --data var/model/train --data model/data/real/ews/train:0.5 \
        --val var/model/val --val model/data/real/ews/select --out var/model/unet.pt
    cropseg-model export --checkpoint var/model/unet.pt --out model/artifacts/cropseg-unet.onnx
    cropseg-model evaluate --model model/artifacts/cropseg-unet.onnx --data var/model/eval
    cropseg-model profile --data model/data/real/ews/train --data var/model/reference:cir,rgbn
    cropseg-model pseudo-label --model ... --images my_flight/ --out var/pseudo
    cropseg-model demo

Commands that need torch (train, export) say how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cropseg_core.bands import LAYOUTS
from cropseg_core.files import write_json
from cropseg_core.log import configure_logging
from cropseg_model.datasets import DatasetError

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
DEFAULT_MODEL = ARTIFACTS / "cropseg-unet.onnx"
log = logging.getLogger("cropseg_model")


class UsageError(Exception):
    """A problem the user fixes by changing the command line or the files it names."""


def _existing(path: str) -> Path:
    resolved = Path(path)
    if not resolved.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return resolved


def _profile_set(value: str) -> tuple[Path, list[str] | None]:
    folder, _, names = value.partition(":")
    layouts = [name.strip() for name in names.split(",") if name.strip()] or None
    unknown = [name for name in layouts or [] if name not in LAYOUTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown layout {', '.join(unknown)}: use {', '.join(LAYOUTS)}")
    return _existing(folder), layouts


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return number


def _probability(value: str) -> float:
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return number


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UsageError(
            "this command needs the training extra: pip install -e 'model[train]' "
            "(torch==2.13.0, onnx); services never need it"
        ) from e


def cmd_generate(args: argparse.Namespace) -> None:
    from cropseg_model.synth import write_dataset

    meta = write_dataset(
        args.out,
        args.count,
        args.seed,
        height=args.height,
        width=args.width,
        workers=args.workers,
        progress=not args.quiet,
        layout_files=args.layout_files,
    )
    layouts: dict[str, int] = {}
    for item in meta:
        layouts[str(item["file_layout"])] = layouts.get(str(item["file_layout"]), 0) + 1
    print(f"wrote {len(meta)} tiles to {args.out} (file layouts: {layouts})")


def _training(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """The weighted sources and the TrainConfig that ``train`` and ``ablate`` arguments give."""
    _require_torch()
    from cropseg_model.train import TrainConfig, parse_source
    from cropseg_model.unet import ENCODERS

    if args.architecture not in (*ENCODERS, "unet"):
        choices = ", ".join([*ENCODERS, "unet"])
        raise UsageError(f"--architecture {args.architecture}: choose one of {choices}")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        seed=args.seed,
        val_every=args.val_every,
        architecture=args.architecture,
        pretrained=not args.random_init,
        index_channels=not args.no_index_channels,
    )
    sources = [parse_source(text) for text in args.data]
    for source in sources:
        if not source.folder.exists():
            raise UsageError(f"{source.folder} does not exist")
    return sources, config


def cmd_train(args: argparse.Namespace) -> None:
    from cropseg_model.train import train

    sources, config = _training(args)
    report = train(sources, args.val, args.out, config, init=args.init, progress=not args.quiet)
    write_json(args.out.with_suffix(".json"), report)
    best = report["best"]
    assert isinstance(best, dict)
    print(
        f"best checkpoint {args.out} at step {best['step']}: val IoU (non-black) "
        f"{best['iou_non_black']:.4f}; training took {report['train_seconds']} s"
    )


def cmd_ablate(args: argparse.Namespace) -> None:
    sources, config = _training(args)
    from cropseg_model.ablation import DEFAULT_VARIANTS, VARIANTS, ablate, ablation_table

    variants = args.variant or list(DEFAULT_VARIANTS)
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        choices = ", ".join(repr(v) for v in VARIANTS)
        raise UsageError(f"unknown --variant {unknown[0]!r}: choose from {choices}")
    report = ablate(sources, args.val, args.real_val, args.synthetic, config, variants,
                    args.work, args.out, progress=not args.quiet)  # fmt: skip
    print(ablation_table(report))


def cmd_export(args: argparse.Namespace) -> None:
    _require_torch()
    from cropseg_model.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint, args.out, args.name, args.version, args.calibrate, args.working_gsd_mm
    )
    if args.report:
        write_json(args.report, result)
    print(json.dumps(result, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cropseg_model.evaluate import (
        METHOD_LABELS,
        enlargement_labels,
        evaluate_all,
        layout_table,
        sweep_table,
    )

    if not args.data and args.synthetic is None:
        raise UsageError("give at least one --data or --synthetic folder")
    report = evaluate_all(
        args.model,
        args.data,
        args.synthetic,
        scales=tuple(args.scales),
        enlarge_factors=tuple(args.enlarge),
        leaf_widths=tuple(args.leaf_px),
        synthetic_limit=args.limit,
        threshold=args.threshold,
        progress=not args.quiet,
    )
    if args.out:
        write_json(args.out, report.to_json())
    print(layout_table(report.sets))
    for name, result in report.sets.items():
        sweeps = (
            (result.scales, "scale", METHOD_LABELS),
            (result.enlargement, "enlarged ×", None),
            (result.exposure_robustness, "exposure gain", METHOD_LABELS),
        )
        for table, label, labels in sweeps:
            if table is not None:
                shown = labels or enlargement_labels(table)
                print(f"\n{name}, IoU (non-black) by {label}:\n" + sweep_table(table, label, shown))


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text}: expected comma-separated numbers") from e
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text}: expected positive numbers")
        return values

    return parse


def cmd_profile(args: argparse.Namespace) -> None:
    from cropseg_model.profile import build_profile

    meta = build_profile(args.model, args.data, args.out, not args.quiet, args.calibrate, args.check)
    print(f"wrote reference profile of {meta['images']} images to {args.out}")
    estimate = meta.get("iou_estimate")
    if isinstance(estimate, dict):
        print(f"label-free IoU estimate: temperature {estimate['temperature']:g}")
        for name, tracked in estimate["tracking"].items():
            if "reason" in tracked:
                print(f"  {name}: {tracked['reason']}")
            else:
                measured, estimated = tracked["measured_iou"], tracked["estimated_iou"]
                print(f"  {name}: measured {measured:.3f}, estimated {estimated:.3f}")


def cmd_pseudo_label(args: argparse.Namespace) -> None:
    from cropseg_model.pseudolabel import pseudo_label

    result = pseudo_label(
        args.model,
        args.images,
        args.out,
        args.confidence,
        args.min_agree,
        progress=not args.quiet,
        layout=args.layout,
    )
    print(
        f"pseudo-labelled {result['images']} images into {args.out}; "
        f"{100 * result['labelled_pixel_fraction']:.1f}% of pixels labelled, the rest ignored"
    )


def cmd_card(args: argparse.Namespace) -> None:
    from cropseg_model.card import VersionError, write_card

    try:
        metrics_path, card_path = write_card(
            args.train_report, args.export_report, args.eval_report, ARTIFACTS, args.stage1_report
        )
    except VersionError as e:
        raise UsageError(str(e)) from e
    print(f"wrote {metrics_path} and {card_path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from cropseg_model.demo import run_demo

    run_demo(args.model, args.out, args.seed, args.index)


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR[:WEIGHT]",
        help="training folder (repeatable), drawn from in proportion to WEIGHT (default 1)",
    )
    p.add_argument(
        "--val",
        type=_existing,
        action="append",
        required=True,
        help="folder to choose the checkpoint on (repeatable; the mean IoU counts); "
        "never a split you report as final evaluation",
    )
    p.add_argument("--steps", type=_positive, default=4000)
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument("--crop", type=_positive, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-every", type=_positive, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--architecture",
        default="efficientnet-lite0",
        help="efficientnet-lite0, -lite1 or -lite2 under the U-Net decoder, or unet (the plain U-Net "
        "of cropseg 1.x)",
    )
    p.add_argument("--random-init", action="store_true", help="do not start from ImageNet weights (ablation)")
    p.add_argument(
        "--no-index-channels", action="store_true", help="no excess-green / NDVI input channels (ablation)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cropseg-model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write synthetic UAV tiles with exact masks")
    p.add_argument("--count", type=_positive, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--height", type=_positive, default=360)
    p.add_argument("--width", type=_positive, default=480)
    p.add_argument("--workers", type=_positive, default=None, help="processes (default: CPU count)")
    p.add_argument(
        "--layout-files",
        action="store_true",
        help="write each tile in its own sensor layout (as users send them) instead of all four bands",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train the network (needs the train extra)")
    _add_training_arguments(p)
    p.add_argument(
        "--out", type=Path, required=True, help="checkpoint path (.pt); a .json report goes beside it"
    )
    p.add_argument("--init", type=_existing, default=None, help="checkpoint to fine-tune from")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "ablate", help="train, export and score variants of the recipe on real images (needs the train extra)"
    )
    _add_training_arguments(p)
    p.add_argument("--variant", action="append", default=None, help="a variant to run (repeatable; default: "
                   "recipe, random initialisation, no index channels, half-resolution decoder)")  # fmt: skip
    p.add_argument("--real-val", type=_existing, action="append", default=[], help="real validation folder")
    p.add_argument("--synthetic", type=_existing, default=None, help="synthetic evaluation tiles")
    p.add_argument("--out", type=Path, required=True, help="the report (.json)")
    p.add_argument("--work", type=Path, default=Path("var/model/ablation"), help="checkpoints and ONNX files")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("export", help="export a checkpoint to ONNX and check parity")
    p.add_argument("--checkpoint", type=_existing, required=True)
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--name", default="cropseg-unet")
    p.add_argument("--version", required=True, help="version stamped into the model, e.g. 2.1.0")
    p.add_argument("--report", type=Path, default=None, help="write the export result as JSON")
    p.add_argument(
        "--calibrate",
        type=_existing,
        action="append",
        default=[],
        help="labelled selection folder (repeatable): store the threshold with the best mean IoU",
    )
    p.add_argument(
        "--working-gsd-mm",
        type=float,
        default=1.0,
        help="ground sampling distance (mm/px) the model works best at, stored in the file (default 1)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "evaluate", help="IoU of the segmentation pipeline and the baselines, per layout and scale"
    )
    p.add_argument("--model", type=_existing, default=DEFAULT_MODEL)
    p.add_argument(
        "--data",
        type=_existing,
        action="append",
        default=[],
        help="labelled folder of real photos (repeatable)",
    )
    p.add_argument(
        "--synthetic", type=_existing, default=None, help="four-band synthetic folder: scored in every layout"
    )
    p.add_argument("--limit", type=_positive, default=None, help="at most this many synthetic tiles")
    p.add_argument(
        "--scales",
        type=_numbers(float),
        default=[],
        help="e.g. 0.25,0.5,0.75,1: shrink the real images first",
    )
    p.add_argument(
        "--enlarge", type=_numbers(float), default=[], help="e.g. 1.5,2,4: enlarge the real images first"
    )
    p.add_argument(
        "--leaf-px",
        type=_numbers(float),
        default=[],
        help="e.g. 32,64: on enlarged images, also the automatic working resolution at these leaf widths",
    )
    p.add_argument("--threshold", type=_probability, default=None, help="default: the model's own")
    p.add_argument("--out", type=Path, default=None, help="write the full report as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("profile", help="build the reference profile for drift detection")
    p.add_argument("--model", type=_existing, default=DEFAULT_MODEL)
    p.add_argument(
        "--data",
        type=_profile_set,
        action="append",
        required=True,
        help="labelled folder[:layout,...] (repeatable): its images in those layouts "
        "(default: every layout the images have bands for)",
    )
    p.add_argument(
        "--calibrate",
        type=_existing,
        action="append",
        default=[],
        help="labelled folder (repeatable) the label-free IoU estimate is calibrated on",
    )
    p.add_argument("--check", type=_existing, action="append", default=[],
                   help="labelled folder (repeatable) to report how well that estimate tracks")  # fmt: skip
    p.add_argument("--out", type=Path, default=ARTIFACTS / "reference_profile.npz")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("pseudo-label", help="label your own images where model and baselines agree")
    p.add_argument("--model", type=_existing, default=DEFAULT_MODEL)
    p.add_argument("--images", type=_existing, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--confidence", type=_probability, default=0.85)
    p.add_argument("--min-agree", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--layout", choices=list(LAYOUTS), default="rgb", help="sensor layout of the images")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("card", help="write metrics.json and the model card from the pipeline's reports")
    p.add_argument("--train-report", type=_existing, required=True, help="report of the last training stage")
    p.add_argument(
        "--stage1-report", type=_existing, default=None, help="report of the stage it started from"
    )
    p.add_argument("--export-report", type=_existing, required=True)
    p.add_argument("--eval-report", type=_existing, required=True)
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("demo", help="generate a tile, segment it, write mask and overlay")
    p.add_argument("--model", type=_existing, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("var/demo"))
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--index", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        args.func(args)
    except (UsageError, DatasetError) as e:
        print(f"cropseg-model {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
