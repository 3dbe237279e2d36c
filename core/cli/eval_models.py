"""`eval-models`: the figures of the shipped models (VAE PSNR and speed, teacher accuracy, sample quality)."""
from __future__ import annotations

import argparse

from core.cli.options import (
    add_dataset,
    add_models,
    bounded,
    check_folder,
    model_spec,
)
from core.config import (
    DIFFUSION_DIR,
)


def add_parsers(add) -> None:
    p = add("eval-models", "Measure the shipped models: VAE PSNR and speed, teacher accuracy, flow sample "
            "quality (teacher accuracy of samples, FID-style distance).", _cmd_eval_models)
    add_models(p, flow=True, teacher=True)
    add_dataset(p)
    p.add_argument("--per-class", type=bounded("images"), default=500, help="flow samples per class (default 500)")
    p.add_argument("--steps", type=bounded("steps"), default=10, help="Euler steps (default 10)")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--diffusion", default=str(DIFFUSION_DIR), help="diffusion counterpart folder (skipped if absent)")
    p.add_argument("--diffusion-steps", type=bounded("steps"), nargs="*", default=[10, 25],
                   help="DDIM steps to evaluate")
    p.add_argument("--cfg-sweep", type=float, nargs="*", default=[1.0, 1.5, 2.0, 3.0, 4.0],
                   help="CFG scales for a quick conditional-accuracy sweep (100 samples per class)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")


def _cmd_eval_models(args: argparse.Namespace) -> None:
    """Print (and record) the figures of the shipped models that the foundation issue asks for."""
    import json

    import torch

    from core.config import DiffusionSamplerConfig
    from core.data.splits import load_dataset
    from core.evaluation.quality import flow_quality, generator_quality
    from core.io import write_json
    from core.models.loading import (
        load_diffusion,
        load_flow_for,
        load_teacher,
        load_vae,
        model_present,
    )
    from core.models.vae import measure_vae
    from core.transport.ddim import sample_diffusion

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = model_spec(args, diffusion=False)
    spec.teacher = args.teacher
    vae, teacher = load_vae(spec), load_teacher(spec)
    fashion = args.dataset == "fashion-mnist"
    if not fashion:
        vae.check_input(args.resolution, args.channels)
        check_folder(args)
    test = load_dataset(args.dataset, "test", args.data_dir, args.resolution, args.channels, args.test_dir)
    if not teacher.fits(test.image_shape, test.num_classes):
        raise ValueError(f"the teacher {args.teacher} does not fit this data ({test.num_classes} classes of "
                         f"{'x'.join(map(str, test.image_shape))} images): give --teacher (train-teacher --dataset "
                         "imagefolder ...)")
    target = (lambda text: f" (target {text})") if fashion else (lambda text: "")   # the embedded default's targets
    report = {"vae": measure_vae(vae, test), "teacher": {"test_accuracy": round(teacher.accuracy(test), 4)}}
    print(f"VAE     test PSNR {report['vae']['test_psnr_db']:.2f} dB{target('>= 24')} | encode "
          f"{report['vae']['encode_images_per_s']:.0f} img/s{target('>= 1000')} | decode "
          f"{report['vae']['decode_images_per_s']:.0f} img/s | {torch.get_num_threads()} threads on {vae.device}")
    print(f"teacher test accuracy {report['teacher']['test_accuracy']:.2%}{target('>= 92%')}")
    flow = load_flow_for(spec, vae.latent_shape(test.image_shape[-1]), test.num_classes)
    if args.cfg_sweep:
        report["flow_cfg_sweep"] = {str(w): flow_quality(flow, vae, teacher, test, per_class=100, steps=args.steps,
                                                         cfg_scale=w, seed=args.seed)["conditional_accuracy"]
                                    for w in args.cfg_sweep}
        print(f"flow    conditional accuracy by CFG scale ({args.steps} Euler steps, 100 per class): "
              f"{json.dumps(report['flow_cfg_sweep'])}")
    q = report["flow"] = flow_quality(flow, vae, teacher, test, per_class=args.per_class, steps=args.steps,
                                      cfg_scale=args.cfg_scale, seed=args.seed)
    print(f"flow    conditional accuracy {q['conditional_accuracy']:.2%}{target('>= 90%')} ({args.steps} Euler steps, "
          f"CFG {args.cfg_scale}, {q['samples']} samples) | FID(teacher features) generated vs test "
          f"{q['fid_teacher_generated_vs_test']:.2f}, test half vs half {q['fid_teacher_test_half_vs_half']:.2f} "
          f"({q['feature_samples_per_set']} per set)")
    if model_present(args.diffusion):
        diffusion = load_diffusion(args.diffusion, args.device, vae.latent_shape(test.image_shape[-1]), test.num_classes)
        report["diffusion"] = {}
        for steps in args.diffusion_steps:
            config = DiffusionSamplerConfig(steps=steps, cfg_scale=args.cfg_scale, seed=args.seed)
            d = generator_quality(lambda y: sample_diffusion(diffusion, y, None, config).latents, vae, teacher, test,
                                  per_class=args.per_class, seed=args.seed)
            report["diffusion"][str(steps)] = d
            print(f"diffusion conditional accuracy {d['conditional_accuracy']:.2%} ({steps} DDIM steps, CFG "
                  f"{args.cfg_scale}) | FID(teacher features) generated vs test {d['fid_teacher_generated_vs_test']:.2f}")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
