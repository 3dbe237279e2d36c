"""core.pipeline.distributed: sharding helpers, and a real 2-process run (gloo, CPU) against one process's results."""
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from core.config import (
    DEFAULT_PGFM_GUIDANCE,
    DiffusionSamplerConfig,
    DistillConfig,
    SamplerConfig,
)
from core.data.datasets import LabelledImages
from core.data.latent_cache import encode_dataset
from core.evaluation.students import EvalConfig, evaluate_set, evaluate_set_distributed
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.vae import LatentAutoencoder, TinyVAEConfig, build_tiny_vae
from core.pipeline.distill import DistillEngine, LocalExecutor, distill, to_pixels
from core.pipeline.distributed import (
    DistContext,
    _run_shard,
    agree_batch_size,
    assemble_items,
    assemble_rows,
    broadcast_object,
    check_indices,
    decode_distributed,
    distill_distributed,
    encode_dataset_distributed,
    gather_items,
    gather_tensor_rows,
    init_from_env,
    plan_backend,
    rank_device,
    shard_batches,
    shard_indices,
    shard_items,
    shard_rows,
)
from core.transport.ddim import sample_diffusion
from core.transport.sampler import initial_noise, sample

WORLD = 2
ENCODE_BATCH = 16  # 90 images -> 6 batches: rank 0 encodes rows 0..47, rank 1 rows 48..89
DECODE_BATCH = 2  # 6 images in 3 batches: rank 0 decodes rows 0..1, rank 1 rows 2..5 (one process's batches)
CONFIGS = {  # sampler batch 2: 6 rows in 3 batches, rank 0 samples rows 0..1 and rank 1 rows 2..5
    "pgfm": DistillConfig(method="pgfm", ipc=2, seed=3, record_trajectories=True,
                          sampler=SamplerConfig(steps=4, guidance=DEFAULT_PGFM_GUIDANCE, batch_size=2)),
    "pgfm-one-batch": DistillConfig(method="pgfm", ipc=2, seed=3, classes=(0, 2),  # 4 rows < 2 batches: 2 each
                                    sampler=SamplerConfig(steps=4, guidance=DEFAULT_PGFM_GUIDANCE)),
    "diffusion-mg": DistillConfig(method="diffusion-mg", ipc=2, seed=3,
                                  diffusion=DiffusionSamplerConfig(steps=5, batch_size=2)),
    "random": DistillConfig(method="random", ipc=2, seed=3),
}
EVAL = EvalConfig(width=8, epochs=2, batch_size=4, seeds=(0, 1, 2), test_batch_size=30)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, like each worker process (OpenMP threads spin on 2 busy cores and slow tiny models
    down a hundredfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- pure helpers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", range(1, 8))
def test_shard_indices_are_contiguous_balanced_and_complete(world):
    for n in range(0, 40):
        blocks = [shard_indices(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))  # in rank order, no gap, no duplicate
        sizes = [len(b) for b in blocks]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert all(b.step == 1 for b in blocks)
        items = [f"x{i}" for i in range(n)]
        assert sum((shard_items(items, r, world) for r in range(world)), []) == items


def _whole_batches(b: range, batch: int, n: int) -> bool:
    return not b or (b.start % batch == 0 and (b.stop % batch == 0 or b.stop == n))


def test_shard_rows_are_whole_batches_when_there_are_enough():
    for n, batch, world in [(90, 16, 2), (6, 2, 2), (0, 4, 3), (17, 4, 3), (100, 7, 5), (50_000, 1024, 8)]:
        blocks = [shard_rows(n, batch, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert all(_whole_batches(b, batch, n) for b in blocks)
        batches = [shard_batches(n, batch, r, world) for r in range(world)]
        assert [i for bs in batches for b in bs for i in b] == list(range(n))
        assert all(len(b) == batch or b.stop == n for bs in batches for b in bs)  # one process's batches
    assert shard_rows(90, 16, 0, 2) == range(0, 48) and shard_rows(6, 2, 0, 2) == range(0, 2)
    # fewer batches than ranks: an even share each, as one smaller batch
    assert [shard_rows(6, 1024, r, 2) for r in range(2)] == [range(0, 3), range(3, 6)]
    assert shard_batches(6, 1024, 1, 2) == [range(3, 6)]
    # encoding keeps whole batches always (the cache is the same bits for any number of processes)
    assert [shard_rows(6, 1024, r, 2, split_batches=False) for r in range(2)] == [range(0, 6), range(6, 6)]
    assert [shard_rows(20, 8, r, 4, split_batches=False) for r in range(4)] == [range(0, 8), range(8, 16),
                                                                                 range(16, 20), range(20, 20)]
    with pytest.raises(ValueError):
        shard_indices(3, 2, 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        shard_rows(3, 0, 0, 2)


@pytest.mark.parametrize("n", [100, 500, 50_000])
@pytest.mark.parametrize("batch", [256, 1024])
def test_rows_over_8_ranks_are_balanced_within_one_batch_and_are_one_process_rows(n, batch):
    """The issue's cases: 500 rows used to shard as [500, 0, ...] for sampling and [256, 244, 0, ...] for decoding."""
    blocks = [shard_rows(n, batch, r, 8) for r in range(8)]
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= batch and min(sizes) > 0
    if n < 8 * batch:
        assert max(sizes) - min(sizes) <= 1
    assert [i for b in blocks for i in b] == list(range(n))      # the same rows as one process, once each
    batches = [b for r in range(8) for b in shard_batches(n, batch, r, 8)]
    assert all(0 < len(b) <= batch for b in batches)
    assert [i for b in batches for i in b] == list(range(n))


def test_plan_backend_follows_the_requested_device():
    assert plan_backend("cpu", cuda_devices=8, local_rank=3, local_world=8) == ("gloo", "cpu")
    assert plan_backend("cuda", 2, 1, 2) == ("nccl", "cuda:1")
    assert plan_backend("auto", 0, 1, 4) == ("gloo", "cpu") and plan_backend(None, 4, 3, 4) == ("nccl", "cuda:3")
    assert plan_backend("cuda:1", 2, 0, 1) == ("nccl", "cuda:1")
    assert plan_backend("mps", 0) == ("gloo", "mps")
    with pytest.raises(ValueError, match="4 processes on this node but only 2 CUDA device"):
        plan_backend("cuda", 2, 0, 4)
    with pytest.raises(ValueError, match="4 processes on this node but only 2 CUDA device"):
        plan_backend("auto", 2, 3, 4)
    with pytest.raises(ValueError, match="CUDA is not available"):
        plan_backend("cuda", 0)
    with pytest.raises(ValueError, match="give --device cuda"):
        plan_backend("cuda:1", 2, 0, 2)


def test_init_from_env_refuses_cuda_without_gpus_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_from_env(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 processes on this node but only 1 CUDA device"):
        init_from_env(device="cuda")
    assert not torch.distributed.is_initialized()


def test_rank_device_is_the_context_device():
    cpu = DistContext(1, 2, 1, torch.device("cpu"), "gloo")
    gpu = DistContext(1, 2, 1, torch.device("cuda", 1), "nccl")
    assert rank_device(cpu, "auto") == "cpu" and rank_device(cpu, "cpu") == "cpu" and rank_device(cpu, "cuda") == "cuda"
    assert rank_device(gpu, "cuda") == "cuda:1" and rank_device(gpu, "auto") == "cuda:1"
    assert rank_device(DistContext(), "cuda") == "cuda"


def test_assemble_reorders_by_index_and_rejects_gaps_and_duplicates():
    x = torch.arange(12.0).reshape(6, 2)
    parts = [([3, 4, 5], x[3:]), ([0, 1, 2], x[:3])]
    assert torch.equal(assemble_rows(parts, 6), x)
    assert torch.equal(assemble_rows([([0, 1, 2], x[:3]), ([], None), ([3, 4, 5], x[3:])]), x)
    assert torch.equal(assemble_rows([([1], x.T[:, 1:2]), ([0], x.T[:, :1])], 2, dim=1), x.T[:, :2])
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        assemble_rows([([0, 1], x[:2]), ([3, 4, 5], x[3:])], 6)
    with pytest.raises(ValueError, match=r"duplicated \[2\]"):
        assemble_rows([([0, 1, 2], x[:3]), ([2, 3, 4, 5], x[2:])], 6)
    with pytest.raises(ValueError, match="out of range"):
        check_indices([0, 1, 7], 3)
    with pytest.raises(ValueError, match="indices but"):
        assemble_rows([([0, 1], x[:3])])
    assert assemble_items([([2], ["c"]), ([0, 1], ["a", "b"])], 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="missing"):
        assemble_items([([0], ["a"])], 2)


def test_single_process_context_gathers_its_own_rows(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    ctx.barrier()
    x = torch.randn(3, 2)
    assert torch.equal(gather_tensor_rows(ctx, x[[2, 0, 1]], [2, 0, 1]), x)
    with pytest.raises(ValueError, match="duplicated"):
        gather_tensor_rows(ctx, x, [0, 0, 1])
    assert gather_items(ctx, ["b", "a"], [1, 0]) == ["a", "b"]
    ctx.shutdown()


# -- hooks in the engine, one process --------------------------------------------------------------------
def test_sampling_rows_of_a_batch_with_its_noise_equals_the_batch(engine):
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    protos = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    config = SamplerConfig(steps=3, guidance=DEFAULT_PGFM_GUIDANCE, seed=5, batch_size=2)
    whole = sample(engine.flow, labels, protos, config, record=True)
    noise = initial_noise(6, (4, 8, 8), 5)
    assert torch.equal(sample(engine.flow, labels, protos, config, noise=noise).latents, whole.latents)
    part = sample(engine.flow, labels[2:], protos[2:], config, record=True, noise=noise[2:])
    assert torch.equal(part.latents, whole.latents[2:])
    assert torch.equal(part.trajectories.states, whole.trajectories.states[:, 2:])
    dconfig = DiffusionSamplerConfig(mode="mg", steps=4, seed=5, batch_size=2)
    dwhole = sample_diffusion(engine.diffusion, labels, protos, dconfig)
    dpart = sample_diffusion(engine.diffusion, labels[2:], protos[2:], dconfig, noise=noise[2:])
    assert torch.equal(dpart.latents, dwhole.latents[2:])
    with pytest.raises(ValueError, match="noise must have shape"):
        sample(engine.flow, labels, protos, config, noise=noise[:3])


def test_distributed_entry_points_in_one_process_equal_the_plain_ones(engine):
    ctx = DistContext()
    config = CONFIGS["pgfm"]
    a, b = distill(engine, config), distill_distributed(engine, config, ctx)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    latents = encode_dataset_distributed(engine.dataset, engine.vae, ctx, use_cache=False)
    assert torch.equal(latents.latents, engine.latents.latents)
    pixels = decode_distributed(engine.vae, a.latents, ctx, batch_size=4)
    assert pixels.dtype == torch.uint8 and torch.equal(pixels, to_pixels(engine.vae.decode(a.latents, 4)))
    assert agree_batch_size(ctx, 7) == 7


def test_uint8_executor_gives_the_float_sets_pixels(engine):
    for name in ("pgfm", "random"):
        a = distill(engine, CONFIGS[name], LocalExecutor(DECODE_BATCH))
        b = distill(engine, CONFIGS[name], LocalExecutor(DECODE_BATCH, "uint8"))
        assert a.images.dtype == torch.float32 and b.images.dtype == torch.uint8
        assert torch.equal(to_pixels(a.images), b.images) and torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="pixels must be one of"):
        LocalExecutor(pixels="float16")
    with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
        LocalExecutor(decode_batch=0)


# -- two processes, gloo ---------------------------------------------------------------------------------
def _models():
    """The tiny models and data of the ``engine`` fixture (built the same way in every process)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(90, 1, 32, 32), dtype=np.uint8)
    data = LabelledImages(images, np.repeat(np.arange(3), 30), ("T-shirt/top", "Bag", "Coat"), "tiny")
    test = LabelledImages(rng.integers(0, 256, size=(30, 1, 32, 32), dtype=np.uint8), np.repeat(np.arange(3), 10),
                          data.class_names, "tiny-test")
    torch.manual_seed(0)
    vae = build_tiny_vae(TinyVAEConfig(block_out_channels=(8, 8, 8), norm_num_groups=4))
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    vae = LatentAutoencoder(vae, source="tiny-0")
    torch.manual_seed(0)
    config = LatentMLPConfig((4, 8, 8), 3, width=64, hidden=128, depth=2, emb_dim=32)
    flow, diffusion = LatentMLP(config).eval(), LatentMLP(config).eval()
    return data, test, vae, flow, diffusion


def _summary(dset) -> dict:
    t = dset.trajectories
    return {"images": dset.images, "labels": dset.labels, "latents": dset.latents, "prototypes": dset.prototypes,
            "weights": dset.weights, "prototype_ids": dset.prototype_ids, "landing_error": dset.landing_error,
            "source_indices": dset.source_indices, "nfe": dset.nfe,
            "trajectories": None if t is None else (t.times, t.states, t.endpoints, t.endpoint_distance),
            "quantization": [(q.label, q.method, q.prototypes, q.weights, q.masses, q.assignments, q.source_indices,
                              q.quantization_error) for q in dset.quantization]}


def _run_all(encode, distill_fn, evaluate_fn, decode_fn) -> dict:
    data, test, vae, flow, diffusion = _models()
    latents = encode(data, vae)
    engine = DistillEngine(data, latents, vae, flow, diffusion)
    out = {"latents": latents.latents, "cache": str(latents.path),
           "decoded": decode_fn(vae, latents.latents[:21], 4),       # 6 batches: one process's
           "decoded-split": decode_fn(vae, latents.latents[:3], 4),  # one batch: rows 0..1 and 2 on the ranks
           "sets": {name: _summary(distill_fn(engine, config)) for name, config in CONFIGS.items()}}
    pgfm = out["sets"]["pgfm"]
    images = None if pgfm["images"] is None else pgfm["images"].float() / 127.5 - 1  # what an export holds
    out["accuracies"] = evaluate_fn(images, pgfm["labels"], test, pgfm["weights"]).accuracies
    return out


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    ctx = init_from_env(timeout=timedelta(seconds=120), device="cpu")  # gloo, whether or not CUDA is there
    try:
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device) == (rank, WORLD, "gloo", torch.device("cpu"))
        out = _run_all(
            lambda data, vae: encode_dataset_distributed(data, vae, ctx, Path(folder) / "cache", ENCODE_BATCH,
                                                         progress=lambda f, m: None),
            lambda engine, config: distill_distributed(engine, config, ctx, DECODE_BATCH),
            lambda images, labels, test, weights: evaluate_set_distributed(broadcast_object(ctx, images), labels, test,
                                                                           EVAL, ctx, weights),  # from rank 0
            lambda vae, latents, batch: decode_distributed(vae, latents, ctx, batch))
        try:  # a failure on one rank is raised on every rank instead of leaving the others waiting
            _run_shard(ctx, lambda: 1 / 0 if rank == 1 else "fine", [rank])
        except Exception as exc:  # noqa: BLE001
            out["failure"] = f"{type(exc).__name__}: {exc}"
        try:  # also when the values go to rank 0 alone
            _run_shard(ctx, lambda: 1 / 0 if rank == 0 else "fine", [rank], dst=0)
        except Exception as exc:  # noqa: BLE001
            out["failure-to-0"] = f"{type(exc).__name__}: {exc}"
        out["auto-batch"] = agree_batch_size(ctx, 5 + rank)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        ctx.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Results of every rank of a 2-process gloo run, and of one process (computed meanwhile)."""
    folder = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(_worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as the workers: results are bit-identical for the same thread count
    try:
        single = _run_all(lambda data, vae: encode_dataset(data, vae, batch_size=ENCODE_BATCH, use_cache=False,
                                                           progress=lambda f, m: None),
                          lambda engine, config: distill(engine, config, LocalExecutor(DECODE_BATCH, "uint8")),
                          lambda images, labels, test, weights: evaluate_set(images, labels, test, EVAL, weights),
                          lambda vae, latents, batch: to_pixels(vae.decode(latents, batch)))
    finally:
        torch.set_num_threads(threads)
    deadline = time.monotonic() + 240
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the 2-process run did not finish in 240 s")
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks, folder


def _equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def test_two_process_encoding_equals_one_process_and_rank_0_writes_the_cache(two_processes):
    single, ranks, folder = two_processes
    for out in ranks:
        _equal(single["latents"], out["latents"], "latents")
    # decoded images: uint8 on rank 0 alone; one process's bits where the ranks ran its batches
    _equal(single["decoded"], ranks[0]["decoded"], "decoded")
    assert ranks[1]["decoded"] is None and ranks[1]["decoded-split"] is None
    split, one = ranks[0]["decoded-split"], single["decoded-split"]
    assert split.dtype == torch.uint8 and split.shape == one.shape
    assert (split.int() - one.int()).abs().max() <= 1  # rows decoded in other batches: float rounding at most
    entries = list((folder / "cache" / "latents").glob("*.safetensors"))
    assert len(entries) == 1 and all(out["cache"] == str(entries[0]) for out in ranks)
    data, _, vae, _, _ = _models()
    cached = encode_dataset(data, vae, folder / "cache", use_cache=True)  # a cache hit: the entry is valid
    assert cached.path == entries[0] and torch.equal(cached.latents, single["latents"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_process_distillation_equals_one_process(two_processes, name):
    single, ranks, _ = two_processes
    expected = single["sets"][name]
    assert len(expected["labels"]) == 2 * (len(CONFIGS[name].classes or (0, 1, 2)))
    assert expected["images"].dtype == torch.uint8
    for rank, out in enumerate(ranks):  # every rank ends with the whole set; the images are on rank 0 alone
        got = dict(out["sets"][name])
        if rank:
            assert got.pop("images") is None
            got["images"] = expected["images"]
        _equal(expected, got, name)


def test_two_process_evaluation_equals_one_process(two_processes):
    single, ranks, _ = two_processes
    assert len(single["accuracies"]) == len(EVAL.seeds)
    for out in ranks:
        assert out["accuracies"] == single["accuracies"]


def test_a_failure_on_one_rank_is_raised_on_every_rank(two_processes):
    _, ranks, _ = two_processes
    assert ranks[0]["failure"] == "ShardError: rank 1 failed: ZeroDivisionError: division by zero"
    assert ranks[1]["failure"] == "ZeroDivisionError: division by zero"
    assert ranks[0]["failure-to-0"] == "ZeroDivisionError: division by zero"
    assert ranks[1]["failure-to-0"] == "ShardError: rank 0 failed: ZeroDivisionError: division by zero"


def test_ranks_agree_on_the_smallest_batch(two_processes):
    _, ranks, _ = two_processes
    assert [out["auto-batch"] for out in ranks] == [5, 5]
