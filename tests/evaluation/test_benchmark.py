import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import core.evaluation.benchmark as benchmark
from core.cli.main import main
from core.config import DistillConfig, config_hash
from core.evaluation.benchmark import Bench, BenchConfig, run_benchmark
from core.models.convnet import ConvNet, ConvNetConfig
from core.models.teacher import Teacher
from core.pipeline.distill import distill


@pytest.fixture
def bench_parts(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))   # the reference cache goes there
    teacher = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))
    test = engine.dataset.subset(np.arange(0, 90, 3), "tiny-test")
    config = BenchConfig(ipcs=(1, 2), seeds=1, methods=("random", "d4m", "ddoq-unweighted"), protocols=("hard",),
                         epochs=2, real_per_class=20, pool="train", whole_data=False, architectures=(), sweep=False,
                         efficiency=False)
    return engine, teacher, test, tmp_path / "bench", config


def test_benchmark_writes_results_table_and_plots(bench_parts):
    engine, teacher, test, out, config = bench_parts
    results = run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None), teacher_accuracy=0.9)
    assert set(results["cells"]) == {f"main/{m}/ipc{i}" for m in config.methods for i in (1, 2)}
    cell = results["cells"]["main/d4m/ipc2"]
    assert 0 <= cell["metrics"]["mode_coverage"] <= 1 and "precision" in cell["metrics"]
    assert cell["hard"]["config"]["use_weights"] is True
    assert results["cells"]["main/ddoq-unweighted/ipc2"]["hard"]["config"]["use_weights"] is False
    table = (out / "RESULTS.md").read_text()
    assert "| d4m |" in table and "published (hard-dsa protocol):* DSA" not in table and "90.00%" in table
    assert "Compute time of all 6 cells" in table
    assert (out / "accuracy_vs_ipc.png").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["cells"].keys() == results["cells"].keys()


def test_interrupted_benchmark_keeps_finished_cells_and_resumes(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    real_evaluate, calls = benchmark.evaluate_set, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_set", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None))
    kept = json.loads((out / "results.json").read_text())["cells"]
    assert len(kept) == 2
    monkeypatch.setattr(benchmark, "evaluate_set", real_evaluate)
    messages = []
    results = run_benchmark(Bench(engine, teacher, test, out, config, log=messages.append))
    assert sum("[skip]" in m for m in messages) == 2 and len(results["cells"]) == 6
    for name, cell in kept.items():  # finished cells are kept as they were
        assert results["cells"][name]["hard"] == cell["hard"]


def test_bench_config_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown benchmark methods"):
        BenchConfig(methods=("pgfm", "magic"))


def test_adding_a_label_protocol_evaluates_only_that(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    hard_only = replace(config, methods=("d4m",), ipcs=(2,))
    first = run_benchmark(Bench(engine, teacher, test, out, hard_only, log=lambda m: None))
    calls = []
    real_evaluate = benchmark.evaluate_set
    monkeypatch.setattr(benchmark, "evaluate_set", lambda *a, **k: calls.append(a[3].protocol) or real_evaluate(*a, **k))
    both = run_benchmark(Bench(engine, teacher, test, out, replace(hard_only, protocols=("hard", "soft")), log=lambda m: None))
    assert calls == ["soft"]
    cell = both["cells"]["main/d4m/ipc2"]
    assert cell["hard"]["accuracies"] == first["cells"]["main/d4m/ipc2"]["hard"]["accuracies"] and "soft" in cell


def test_a_resumed_cell_measures_its_set_again(bench_parts):
    engine, teacher, test, out, config = bench_parts
    hard_only = replace(config, methods=("d4m",), ipcs=(2,))
    run_benchmark(Bench(engine, teacher, test, out, hard_only, log=lambda m: None))
    saved = json.loads((out / "results.json").read_text())
    saved["cells"]["main/d4m/ipc2"].update(metrics={"stale": True}, distill_seconds=-1.0)
    (out / "results.json").write_text(json.dumps(saved))
    both = run_benchmark(Bench(engine, teacher, test, out, replace(hard_only, protocols=("hard", "soft")), log=lambda m: None))
    cell = both["cells"]["main/d4m/ipc2"]
    assert "stale" not in cell["metrics"] and "mode_coverage" in cell["metrics"] and cell["distill_seconds"] >= 0


def test_sweep_cells_of_an_earlier_default_are_dropped(bench_parts):
    engine, teacher, test, out, config = bench_parts
    out.mkdir(parents=True)
    cells = {"sweep/ipc10/lambda=0.9": {}, "sweep/ipc10/default": {}, "sweep/ipc50/lambda=0.9": {}, "main/d4m/ipc1": {}}
    (out / "results.json").write_text(json.dumps({"cells": cells}))
    bench = Bench(engine, teacher, test, out, config, log=lambda m: None)
    bench.load()
    bench.prune_stale_sweep()
    kept = {"sweep/ipc10/default", "sweep/ipc50/lambda=0.9", "main/d4m/ipc1"}
    assert set(bench.results["cells"]) == kept == set(json.loads((out / "results.json").read_text())["cells"])


def test_long_student_training_reports_progress_in_the_log(bench_parts):
    engine, teacher, test, out, config = bench_parts
    messages = []
    run_benchmark(Bench(engine, teacher, test, out, replace(config, methods=("d4m",), ipcs=(1,)),
                        log=messages.append, progress_interval_s=0.0))
    progress = [m for m in messages if m.startswith("    main/d4m/ipc1 hard")]
    assert any("epoch 2/2" in m for m in progress) and any("test accuracy" in m for m in progress)


def test_a_cell_interrupted_between_label_protocols_keeps_the_finished_one(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    real_evaluate = benchmark.evaluate_set

    def crash_on_soft(*args, **kwargs):
        if args[3].protocol == "soft":
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_set", crash_on_soft)
    both = replace(config, methods=("d4m",), ipcs=(2,), protocols=("hard", "soft"))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(Bench(engine, teacher, test, out, both, log=lambda m: None))
    cell = json.loads((out / "results.json").read_text())["cells"]["main/d4m/ipc2"]
    assert "hard" in cell and "soft" not in cell


def test_a_cell_interrupted_between_seeds_keeps_the_finished_students(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    real_evaluate = benchmark.evaluate_set
    trained = []

    def crash_on_seed_2(*args, **kwargs):
        (seed,) = args[3].seeds
        if seed == 2 and not trained.count("resumed"):
            raise KeyboardInterrupt
        trained.append(seed)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_set", crash_on_seed_2)
    three = replace(config, methods=("d4m",), ipcs=(2,), seeds=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(Bench(engine, teacher, test, out, three, log=lambda m: None))
    cell = json.loads((out / "results.json").read_text())["cells"]["main/d4m/ipc2"]
    assert "hard" not in cell and cell["partial"]["hard"]["seeds"] == [0, 1]
    trained.append("resumed")
    run_benchmark(Bench(engine, teacher, test, out, three, log=lambda m: None))
    cell = json.loads((out / "results.json").read_text())["cells"]["main/d4m/ipc2"]
    assert trained == [0, 1, "resumed", 2]   # only the missing student trained again
    assert "partial" not in cell and len(cell["hard"]["accuracies"]) == 3
    # the same accuracies as students trained in one go
    whole = real_evaluate(*_d4m_set(engine), test, benchmark.protocol_config("hard", epochs=config.epochs, seeds=(0, 1, 2)))
    assert cell["hard"]["accuracies"] == pytest.approx(whole.accuracies, abs=1e-5)


def _d4m_set(engine):
    dset = distill(engine, DistillConfig(method="d4m", ipc=2))
    return dset.images, dset.labels


def test_report_only_rewrites_the_table_from_results_json(bench_parts):
    engine, teacher, test, out, config = bench_parts
    run_benchmark(Bench(engine, teacher, test, out, replace(config, methods=("random",), ipcs=(1,)), log=lambda m: None))
    (out / "RESULTS.md").unlink()
    assert main(["bench", "--report-only", "--out", str(out)]) in (0, None)
    assert "| random |" in (out / "RESULTS.md").read_text()
    with pytest.raises(SystemExit, match="no .*results.json to report on"):
        main(["bench", "--report-only", "--out", str(out / "elsewhere")])


def test_random_vae_trains_on_the_vae_round_trip_of_the_random_real_images(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    trained_on = []
    real_evaluate = benchmark.evaluate_set
    monkeypatch.setattr(benchmark, "evaluate_set", lambda images, *a, **k: trained_on.append(images) or real_evaluate(images, *a, **k))
    bench = Bench(engine, teacher, test, out, replace(config, methods=("random", "random-vae"), ipcs=(2,)), log=lambda m: None)
    run_benchmark(bench)
    real, round_trip = trained_on
    picked = distill(engine, bench.distill_config("random-vae", 2))
    assert torch.equal(real, picked.images)                               # the same real picks...
    assert torch.equal(round_trip, engine.vae.decode(picked.latents))     # ...decoded from their latents
    assert not torch.allclose(real, round_trip)


def test_random_vae_time_per_image_includes_the_decode(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    real_decode = benchmark.LocalExecutor.decode
    monkeypatch.setattr(benchmark.LocalExecutor, "decode", lambda self, vae, z: time.sleep(0.5) or real_decode(self, vae, z))
    results = run_benchmark(Bench(engine, teacher, test, out, replace(config, methods=("random-vae",), ipcs=(2,)),
                                  log=lambda m: None))
    cell = results["cells"]["main/random-vae/ipc2"]
    assert cell["distill_seconds"] >= 0.5
    assert cell["metrics"]["seconds_per_image"] * cell["hard"]["num_images"] >= 0.5


def test_benchmark_under_protocols_writes_whole_data_ranking_and_cross_architecture(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    monkeypatch.setattr(benchmark, "ARCH_IPCS", (2,))
    config = replace(config, methods=("random", "ddoq", "pgfm"), ipcs=(2,), protocols=("hard", "hard-dsa", "soft-online"),
                     whole_data=True, whole_data_epochs=1, architectures=("mlp",))
    distilled = []
    real_distill = benchmark.distill
    monkeypatch.setattr(benchmark, "distill", lambda engine, dc, **kw: distilled.append(dc) or real_distill(engine, dc, **kw))
    results = run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None))
    cells = results["cells"]
    # each set is distilled once: its cross-architecture cell trains on the main cell's set
    assert len(distilled) == len({config_hash(dc.to_dict()) for dc in distilled})
    assert {dc.method for dc in distilled} == {"random", "ddoq", "pgfm"}
    assert {"whole/convnet", "arch/mlp/random/ipc2", "arch/mlp/ddoq/ipc2", "arch/mlp/pgfm/ipc2"} <= set(cells)
    for name in ("main/pgfm/ipc2", "whole/convnet"):
        assert {cells[name][p]["protocol"] for p in config.protocols} == set(config.protocols)
    assert cells["whole/convnet"]["hard"]["num_images"] == len(engine.dataset)
    assert cells["whole/convnet"]["hard"]["config"]["epochs"] == 1
    assert cells["arch/mlp/ddoq/ipc2"]["hard-dsa"]["config"]["architecture"] == "mlp"
    assert set(cells["arch/mlp/ddoq/ipc2"]) >= {"hard-dsa"} and "hard" not in cells["arch/mlp/ddoq/ipc2"]
    # DD-Ranking rows follow the definitions from the cells' own accuracies
    rows = {r["method"]: r for r in benchmark.ranking_rows(results)}
    acc = lambda name, p: cells[name][p]["accuracy_mean"]  # noqa: E731
    assert rows["ddoq"]["ior_hard-dsa"] == pytest.approx(acc("main/ddoq/ipc2", "hard-dsa") - acc("main/random/ipc2", "hard-dsa"))
    assert rows["pgfm"]["hlr"] == pytest.approx(acc("whole/convnet", "hard") - acc("main/pgfm/ipc2", "hard"))
    assert 0 <= rows["pgfm"]["lrs"] <= 100 and 0 <= rows["pgfm"]["ars"] <= 100
    table = (out / "RESULTS.md").read_text()
    for text in ("### `hard-dsa`", "*published (hard-dsa protocol):* DSA", "## DD-Ranking scores",
                 "## Cross-architecture students", "| mlp | ddoq |", "## PGFM against random real images",
                 "*whole training set (90 images, 1 epoch, 1 seed)*", "Seconds per ConvNet-3 student"):
        assert text in table, text
    assert results["meta"]["selection_split"] == "validation" and results["meta"]["pool"]["images"] == 90


def test_a_cell_of_another_pool_is_recomputed(bench_parts):
    engine, teacher, test, out, config = bench_parts
    config = replace(config, methods=("random",), ipcs=(1,))
    run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None))
    saved = json.loads((out / "results.json").read_text())
    cell = saved["cells"]["main/random/ipc1"]
    cell["spec"]["pool"] = "train-minus-val"            # the same cell, as a run on the other pool keyed it
    cell["hash"] = config_hash(cell["spec"])
    (out / "results.json").write_text(json.dumps(saved))
    messages = []
    run_benchmark(Bench(engine, teacher, test, out, config, log=messages.append))
    assert not any("[skip]" in m for m in messages)
    assert json.loads((out / "results.json").read_text())["cells"]["main/random/ipc1"]["spec"]["pool"] == "train"


def test_bench_refuses_an_engine_that_does_not_hold_its_pool_and_a_sweep_without_validation(bench_parts):
    engine, teacher, test, out, config = bench_parts
    with pytest.raises(ValueError, match="hold the validation split out first"):
        Bench(engine, teacher, test, out, replace(config, pool="train-minus-val"))
    with pytest.raises(ValueError, match="validation split"):
        Bench(engine, teacher, test, out, replace(config, sweep=True))
    with pytest.raises(ValueError, match="unknown protocols"):
        replace(config, protocols=("hard", "dsa"))


def test_the_sweep_reads_the_validation_split_and_compares_with_random_real(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    validation = engine.dataset.subset(np.arange(1, 90, 3), "tiny-val")
    splits = []
    real_evaluate = benchmark.evaluate_set
    monkeypatch.setattr(benchmark, "evaluate_set", lambda *a, **k: splits.append(a[2].name) or real_evaluate(*a, **k))
    config = replace(config, main=False, sweep=True, sweep_ipc=2, sweep_variants=("default", "cell offset=1", "random real"))
    results = run_benchmark(Bench(engine, teacher, test, out, config, validation, log=lambda m: None))
    assert splits == ["tiny-val"] * 3
    cells = results["cells"]
    assert set(cells) == {"sweep/ipc2/default", "sweep/ipc2/cell offset=1", "sweep/ipc2/random real"}
    assert cells["sweep/ipc2/default"]["spec"]["split"] == "val" and cells["sweep/ipc2/random real"]["method"] == "random"
    assert cells["sweep/ipc2/cell offset=1"]["spec"]["distill"]["cell_offset"] == 1.0
    table = (out / "RESULTS.md").read_text()
    assert "## PGFM sweep at IPC 2" in table and "**validation** accuracy" in table and "vs random real" in table
    with pytest.raises(ValueError, match="unknown sweep variants"):
        Bench(engine, teacher, test, out, replace(config, sweep_variants=("lambda=7",)), validation).sweep_variants()


def test_benchmark_cells_and_their_students_go_to_the_registry(bench_parts, tmp_path):
    from core.registry import Registry

    engine, teacher, test, out, config = bench_parts
    with Registry(tmp_path / "runs.sqlite") as reg:
        config = replace(config, methods=("random",), ipcs=(1,), protocols=("hard", "hard-dsa"))
        results = run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None, registry=reg))
        (run,) = reg.runs(kind="bench")
    cell = results["cells"]["main/random/ipc1"]
    assert run["name"] == "main/random/ipc1" and run["config_hash"] == cell["hash"] and run["config"] == cell["spec"]
    assert [e["protocol"] for e in run["evaluations"]] == ["hard", "hard-dsa"]
    assert run["evaluations"][1]["accuracies"] == pytest.approx(cell["hard-dsa"]["accuracies"], abs=1e-5)


def test_random_real_draws_its_images_anew_for_every_student_seed(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    trained = []
    real_evaluate = benchmark.evaluate_set
    monkeypatch.setattr(benchmark, "evaluate_set",
                        lambda images, *a, **k: trained.append((images, a[2].seeds)) or real_evaluate(images, *a, **k))
    results = run_benchmark(Bench(engine, teacher, test, out, replace(config, methods=("random", "d4m"), ipcs=(2,), seeds=2),
                                  log=lambda m: None))
    (draw0, s0), (draw1, s1), (d4m_0, t0), (d4m_1, t1) = trained
    assert (s0, s1, t0, t1) == ((0,), (1,), (0,), (1,))   # a student per seed (saved one by one)
    assert torch.equal(d4m_0, d4m_1)                        # d4m: one set for both; random: a draw per seed
    assert torch.equal(draw0, distill(engine, replace(DistillConfig(method="random", ipc=2), seed=0)).images)
    assert torch.equal(draw1, distill(engine, replace(DistillConfig(method="random", ipc=2), seed=1)).images)
    cell = results["cells"]["main/random/ipc2"]
    assert cell["spec"]["draws"] == benchmark.PER_SEED and cell["hard"]["draws"] == "one set per seed"
    assert len(cell["hard"]["accuracies"]) == 2 and list(cell["hard"]["config"]["seeds"]) == [0, 1]


def test_pgfm_dm_refines_longer_up_to_ipc_10_and_random_is_never_refined(bench_parts):
    from core.config import DEFAULT_REFINE, LONG_REFINE_UP_TO_IPC

    engine, teacher, test, out, config = bench_parts
    bench = Bench(engine, teacher, test, out, config, log=lambda m: None)
    short, long = bench.distill_config("pgfm-dm", LONG_REFINE_UP_TO_IPC + 1), bench.distill_config("pgfm-dm", 1)
    assert short.method == long.method == "pgfm" and short.refine == DEFAULT_REFINE
    assert long.refine.iterations == 3 * DEFAULT_REFINE.iterations and long.refine.space == DEFAULT_REFINE.space
    assert bench.distill_config("pgfm", 10).refine.iterations == 0
    assert bench.distill_config("random", 10).refine.iterations == 0
    for ipc in (1, 50):   # pgfm-tdm: the default refinement in the teacher's features, at every IPC
        assert bench.distill_config("pgfm-tdm", ipc).refine == replace(DEFAULT_REFINE, embedding="teacher", objective="mmd")


def test_pgfm_tdm_refines_in_the_benchs_teacher_features(bench_parts, monkeypatch):
    engine, teacher, test, out, config = bench_parts
    import core.pipeline.distill as distill_module

    seen = []
    real_refine = distill_module.refine_set
    monkeypatch.setattr(distill_module, "refine_set", lambda *a, **kw: (seen.append(a[-1]), real_refine(*a, **kw))[1])
    monkeypatch.setattr(benchmark, "TEACHER_REFINE", replace(benchmark.TEACHER_REFINE, iterations=2, real_batch=8))
    results = run_benchmark(Bench(engine, teacher, test, out, replace(config, methods=("pgfm-tdm",), ipcs=(1,)),
                                  log=lambda m: None))
    cell = results["cells"]["main/pgfm-tdm/ipc1"]
    assert cell["spec"]["distill"]["refine"]["embedding"] == "teacher" and "hard" in cell
    assert seen and all(net is teacher.net for net in seen)   # the benchmark's own teacher is the embedding


def test_a_results_folder_of_other_models_is_refused_and_left_unchanged(bench_parts):
    engine, teacher, test, out, config = bench_parts
    config = replace(config, methods=("random",), ipcs=(1,))
    run_benchmark(Bench(engine, teacher, test, out, config, log=lambda m: None))
    before = (out / "results.json").read_bytes()
    assert set(json.loads(before)["meta"]["models"]) == {"vae", "flow", "diffusion", "teacher"}
    other_flow = replace(engine, flow=type(engine.flow)(engine.flow.config))   # the same network, new weights
    with pytest.raises(ValueError, match=r"other models \(flow differ\)"):
        run_benchmark(Bench(other_flow, teacher, test, out, config, log=lambda m: None))
    assert (out / "results.json").read_bytes() == before
    messages = []   # the same models resume, also without a model the folder's cells do not need
    run_benchmark(Bench(replace(engine, diffusion=None), teacher, test, out, config, log=messages.append))
    assert any("[skip]" in m for m in messages)
    assert json.loads((out / "results.json").read_text())["meta"]["models"]["diffusion"] is not None   # kept


def test_two_benchmarks_sharing_a_folder_keep_each_others_cells_and_protocols(bench_parts):
    engine, teacher, test, out, config = bench_parts
    out.mkdir(parents=True)
    one = replace(config, methods=("random", "d4m"), ipcs=(1,))
    first = Bench(engine, teacher, test, out, one, log=lambda m: None)
    second = Bench(engine, teacher, test, out, replace(one, methods=("d4m",), protocols=("soft",)), log=lambda m: None)
    first.load()
    second.load()   # both read the empty folder before either wrote
    first.run_main()
    second.run_main()   # its writes merge with the first's instead of replacing them
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert set(cells) == {"main/random/ipc1", "main/d4m/ipc1"}
    assert {"hard", "soft"} <= set(cells["main/d4m/ipc1"]) and "hard" in cells["main/random/ipc1"]
    assert cells["main/d4m/ipc1"]["hard"]["accuracies"] == first.results["cells"]["main/d4m/ipc1"]["hard"]["accuracies"]


def test_a_benchmark_writes_again_only_what_it_changed_since_it_last_saved(bench_parts):
    engine, teacher, test, out, config = bench_parts
    out.mkdir(parents=True)
    first, second = (Bench(engine, teacher, test, out, config, log=lambda m: None) for _ in range(2))
    first.load()
    second.load()
    first._store("c", {"hash": "old"})
    first._store("gone", {"hash": "x"})
    first.drop(["gone"])
    second._store("c", {"hash": "new"})   # the other benchmark recomputes c and brings gone back
    second._store("gone", {"hash": "back"})
    first._store("other", {"hash": "o"})   # the first one's old c and its drop of gone are not applied again
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert cells == {"c": {"hash": "new"}, "gone": {"hash": "back"}, "other": {"hash": "o"}}
    first.refresh()
    assert first.results["cells"] == cells


def test_a_shared_folder_keeps_the_main_tables_config_and_refuses_other_models(bench_parts):
    engine, teacher, test, out, config = bench_parts
    out.mkdir(parents=True)
    main = Bench(engine, teacher, test, out, config, log=lambda m: None)
    sweep_only = Bench(engine, teacher, test, out, replace(config, main=False), log=lambda m: None)
    for bench, name in ((main, "main's"), (sweep_only, "the sweep's")):   # both started on the empty folder
        bench.load()
        bench.results["meta"] = {"config": name, "models": {"flow": "f0"}}
    main.save()
    sweep_only.save()
    assert json.loads((out / "results.json").read_text())["meta"]["config"] == "main's"
    sweep_only.results["meta"]["models"] = {"flow": "f1"}
    with pytest.raises(ValueError, match="other models"):
        sweep_only.save()
    assert json.loads((out / "results.json").read_text())["meta"]["models"] == {"flow": "f0"}


def test_a_merged_cell_keeps_the_other_writers_students_unless_its_parameters_changed():
    def students(*seeds):
        return {"seeds": list(seeds), "accuracies": [0.1 * s for s in seeds], "seconds": [10.0 + s for s in seeds]}

    theirs = {"hash": "a", "hard": {"accuracies": [0.5]}, "partial": {"soft": students(0, 1), "hard-dsa": students(0)}}
    mine = {"hash": "a", "hard-dsa": {"accuracies": [0.6]}, "partial": {"soft": students(2, 0)}}
    merged = benchmark.merge_cell(theirs, mine)
    assert merged["hard"] == theirs["hard"] and merged["hard-dsa"] == mine["hard-dsa"]
    assert merged["partial"] == {"soft": students(2, 0, 1)}   # both writers' students; hard-dsa is finished
    assert benchmark.merge_cell({**theirs, "hash": "b"}, mine) == mine
    assert benchmark.merge_cell(None, mine) == mine
