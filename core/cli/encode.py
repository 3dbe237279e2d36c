"""`encode`: a dataset into the latent cache, or a large ImageFolder into a sharded, resumable latent store."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.cli.options import (
    add_batch_options,
    add_dataset,
    add_models,
    bounded,
)


def add_parsers(add) -> None:
    p = add("encode", "Encode a dataset with the VAE into the latent cache (reused when present), or with --store "
            "a large ImageFolder (e.g. ImageNet subsets at 256 px) into a sharded, resumable latent store.", _cmd_encode)
    add_models(p)
    add_dataset(p)
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to encode (default: train test; with --store: train). A split is the sub-folder "
                        "ROOT/<split> of an ImageFolder when it exists, else ROOT itself")
    add_batch_options(p, decode=False, encode_aliases=("--batch-size",))
    g = p.add_argument_group("latent store (--dataset imagefolder only)")
    g.add_argument("--store", default=None, metavar="DIR",
                   help="write a sharded latent store to DIR instead of the cache: streamed, one shard at a time, "
                        "resumable (re-run the same command after an interruption); `distill --latent-store DIR` "
                        "distils from it")
    g.add_argument("--classes", default=None,
                   help="classes of the ImageFolder to encode: comma-separated WordNet ids (n01440764), folder or "
                        "class names (tench), or a class list: 'imagenette', 'imagewoof' (shipped) or a text file "
                        "with one '<wnid> [name]' a line (default: every class folder)")
    g.add_argument("--shard-size", type=bounded("images"), default=None, help="images per shard file (default 4096)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning (recorded in the store's index.json) instead of stopping")
    g.add_argument("--max-per-class", type=bounded("images"), default=None, metavar="K",
                   help="keep the first K files (by name) of each class (default: all)")
    g.add_argument("--workers", type=bounded("workers"), default=None,
                   help="threads decoding images (default: min(8, CPUs))")
    g.add_argument("--overwrite", action="store_true",
                   help="delete a store already in DIR (shards and index) and encode anew; without it a store of "
                        "the same dataset and VAE is resumed, another one is refused")


STORE_ONLY = {"classes": None, "shard_size": None, "skip_bad": False, "max_per_class": None, "workers": None,
              "overwrite": False}


def _cmd_encode(args: argparse.Namespace) -> None:
    from core.data.latent_cache import encode_dataset
    from core.device import describe_peak_memory
    from core.models.spec import ModelSpec

    if args.store:
        return _encode_store(args)
    given = [f"--{k.replace('_', '-')}" for k, v in STORE_ONLY.items() if getattr(args, k) != v]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --store DIR (a sharded latent store of an ImageFolder)")
    from core.data.splits import load_dataset
    from core.models.loading import load_vae

    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    if args.dataset == "imagefolder":
        from core.cli.options import check_folder

        vae.check_input(args.resolution, args.channels)
        check_folder(args)
    for split in args.splits or ["train", "test"]:
        t0 = time.perf_counter()
        dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels,
                               getattr(args, "test_dir", None))
        batch = vae.batch_size(args.encode_batch, int(dataset.image_shape[-1]))
        latents = encode_dataset(dataset, vae, args.cache_dir, batch_size=batch)
        print(f"{dataset.name}: {len(latents)} latents of shape {latents.latent_shape} -> {latents.path} "
              f"({time.perf_counter() - t0:.1f} s; encode batch {batch} ({args.encode_batch}); "
              f"{describe_peak_memory(vae.device)})")


def _encode_store(args: argparse.Namespace) -> None:
    """``encode --store DIR``: a streamed ImageFolder into a sharded, resumable latent store."""
    from core.data.imagefolder import open_image_folder
    from core.data.store_encoding import encode_to_store
    from core.device import describe_peak_memory
    from core.models.loading import load_vae
    from core.models.spec import ModelSpec

    if args.dataset != "imagefolder":
        raise ValueError("--store writes a sharded latent store of an ImageFolder: add --dataset imagefolder "
                         "--data-dir ROOT (the embedded Fashion-MNIST goes to the latent cache, without --store)")
    if not args.data_dir:
        raise ValueError("--store needs the ImageFolder's root: --data-dir ROOT (one sub-folder of images per class, "
                         "or ROOT/train/<class>/...)")
    if args.channels != 3:
        raise ValueError("--store reads ImageFolders as RGB (3 channels); drop --channels")
    splits = args.splits or ["train"]
    if len(splits) != 1:
        raise ValueError(f"--store encodes one split into one store, got --splits {' '.join(splits)}; run once per split")
    t0 = time.perf_counter()
    dataset = open_image_folder(Path(args.data_dir).resolve(), args.classes, args.resolution, split=splits[0],
                                skip_bad=args.skip_bad, max_per_class=args.max_per_class, workers=args.workers)
    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    batch = vae.batch_size(args.encode_batch, int(dataset.image_shape[-1]))
    print(f"{dataset!r}: encoding with {args.vae} into {args.store}, {batch} images per VAE call "
          f"({args.encode_batch})", flush=True)
    store = encode_to_store(dataset, vae, args.store, shard_size=args.shard_size or 4096,
                            batch_size=batch, overwrite=args.overwrite)
    skipped = store.index.get("skipped_files", [])
    print(f"{dataset.name}: {len(store)} latents of shape {store.latent_shape} in {len(store.shards)} shards, "
          f"{store.num_classes} classes -> {store.path} ({time.perf_counter() - t0:.1f} s; "
          f"{describe_peak_memory(vae.device)})"
          + (f"; {len(skipped)} unreadable images skipped (listed in {store.path / 'index.json'})" if skipped else ""))
