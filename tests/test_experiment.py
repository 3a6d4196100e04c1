"""The experiment runner: CSV format, resuming after an interruption, and errors before any file is written."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lidlib.toy
from lidlib import evaluation as X
from lidlib.evaluation import config, results, runner
from lidlib.evaluation import metrics as M
from lidlib.models import Preprocess

SIZE = 16
METHODS = ["LRP-0", "SIG-LID-IG", "LayerCAM"]


def toy_model():
    """A seeded float64 CNN that carries what the runner needs (preprocess, input size, stages, name)."""
    m = lidlib.toy.cnn(3, SIZE, 10, seed=3)
    m.stages = {"s1": "1", "s2": "2", "s3": "3", "s4": "4", "s5": "5"}
    m.preprocess = Preprocess([0.5] * 3, [0.25] * 3)
    m.input_size = SIZE
    m.display_name = "toy-cnn"
    return m


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((20, 24 + i, 3)) * 255).astype("uint8")).save(d / f"im{i}.png")
    return d


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def run(folder, out, metric="probability-change", methods=METHODS, **kw):
    kw.setdefault("progress", False)
    return X.run(metric, methods, folder, out, model=toy_model(), **kw)


def test_csv_format_and_figure(folder, tmp_path):
    out = tmp_path / "r.csv"
    res = run(folder, out, ["probability-change", "minimal-patch"], radii=(0, 1, 2))
    rows = rows_of(out)
    assert tuple(rows[0]) == X.COLUMNS
    body = rows[1:]
    assert len(body) == 3 * len(METHODS) * (len(M.RATIOS) + 3) == len(res)
    assert {r[0] for r in body} == {"im0.png", "im1.png", "im2.png"}
    assert {r[2] for r in body} == {"toy-cnn"} and {r[5] for r in body} == {"s5"}
    pc = [r for r in body if r[4] == "probability-change"]
    assert sorted({r[6] for r in pc}, key=float) == [f"{r:g}" for r in M.RATIOS]
    for r in body:
        float(r[7])
        assert int(r[1]) in range(10)
    # one explanation serves both metrics, and the values are those of lidlib.metrics
    model = toy_model()
    x = lidlib.images.load_image(folder / "im1.png", model).double()
    c = int(model(x).argmax())
    e = lidlib.explain(model, x, c, "SIG-LID-IG")
    curve = M.probability_change(model, x, c, e.heatmap(5), seed=config._seed_for(0, "im1.png"))
    got = [float(r[7]) for r in pc if r[0] == "im1.png" and r[3] == "SIG-LID-IG"]
    assert np.allclose(got, curve.delta[0].numpy(), atol=1e-12)
    assert [p.name for p in res.figures] == ["r-probability-change.png", "r-minimal-patch.png"]
    for p in res.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    means = res.mean("minimal-patch", "s5")
    assert list(means) == METHODS and means["LRP-0"][0] == ["0", "1", "2"]


def test_resume_after_interruption(folder, tmp_path, monkeypatch):
    full = tmp_path / "full.csv"
    run(folder, full, figure=False)
    expected = sorted(tuple(r) for r in rows_of(full)[1:])

    out = tmp_path / "part.csv"
    real = runner._compute
    calls = []

    def interrupted(*args, **kw):
        calls.append((args[1].name, args[3]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(runner, "_compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(folder, out, figure=False)
    part = rows_of(out)
    assert len(part) == 1 + 2 * len(M.RATIOS)          # header and two complete (image, method) pairs
    # a run killed in the middle of a write: half of the next pair, and a cut-off line
    third = [r for r in rows_of(full)[1:] if r[0] == "im0.png" and r[3] == "LayerCAM"]
    with open(out, "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(third[:4])
        f.write(",".join(third[4])[:20])
    calls.clear()
    monkeypatch.setattr(runner, "_compute", lambda *a, **k: (calls.append((a[1].name, a[3])), real(*a, **k))[1])
    res = run(folder, out, figure=False)
    got = sorted(tuple(r) for r in rows_of(out)[1:])
    assert got == expected                              # nothing duplicated, nothing missing, same values
    assert len(set(got)) == len(got) == len(res)
    assert ("im0.png", "LRP-0") not in calls and ("im0.png", "SIG-LID-IG") not in calls
    assert calls[0] == ("im0.png", "LayerCAM") and len(calls) == 3 * len(METHODS) - 2
    # a complete file: a rerun computes nothing and changes nothing
    calls.clear()
    before = out.read_bytes()
    run(folder, out, figure=False)
    assert calls == [] and out.read_bytes() == before


def test_one_csv_holds_several_metrics_and_shares_s5_rows(folder, tmp_path):
    out = tmp_path / "r.csv"
    run(folder, out, methods=["SIG-LID-IG"], figure=False, limit=1)
    n = len(rows_of(out))
    res = run(folder, out, "multiscale", methods=["SIG-LID-IG"], figure=False, limit=1)
    assert len(rows_of(out)) == n + 4 * len(M.RATIOS)    # s5 was there already
    assert sorted({r["stages"] for r in res.rows}) == sorted(M.SCALES)


def test_robustness_and_class_discrimination_rows(folder, tmp_path):
    out = tmp_path / "rob.csv"
    res = run(folder, out, "robustness", methods=["SIG-LID-Taylor"], n_copies=2, figure=False, limit=2)
    assert {r["metric"] for r in res.rows} == {"robustness-pearson", "robustness-sign-flip"}
    assert len(res) == 2 * 2 * 2
    assert all(-1 <= r["value"] <= 1 for r in res.rows)
    model = toy_model()
    g = torch.Generator().manual_seed(0)
    img, (ml, mr) = lidlib.images.composite(torch.rand(3, 16, 8, generator=g), torch.rand(3, 16, 8, generator=g),
                                            size=SIZE)
    x = model.preprocess(img)[None]
    samples = [X.Sample("pair:left", x, 1, img, ml, mr), X.Sample("pair:right", x, 2, img, mr, ml)]
    out = tmp_path / "cd.csv"
    res = X.run("class-discrimination", ["SIG-LID-IG", "GradCAM"], samples, out, model=model, progress=False)
    assert len(res) == 2 * 2 * 3
    assert {r["target"] for r in res.rows} == {"1", "2"}
    assert res.figures and res.figures[0].exists()


# ---------------------------------------------------------------------------------------------------------------------
# errors: raised before any file is written
# ---------------------------------------------------------------------------------------------------------------------

def assert_no_files(tmp_path, names=("r.csv", "r.png", "r.csv.tmp", "r.json")):
    for n in names:
        assert not (tmp_path / n).exists()


@pytest.mark.parametrize("case", ["metric", "method", "empty", "unreadable", "missing", "regions", "stage",
                                  "scorecam-multiscale", "bad-input"])
def test_errors_before_any_file(case, folder, tmp_path):
    out = tmp_path / "r.csv"
    model = toy_model()
    kw = dict(model=model, progress=False)
    if case == "metric":
        with pytest.raises(ValueError, match="unknown metric 'pixel-flip'.*probability-change"):
            X.run("pixel-flip", METHODS, folder, out, **kw)
    elif case == "method":
        with pytest.raises(ValueError, match="unknown method 'SIG-LID-XX'.*SIG-LID-IG"):
            X.run("probability-change", ["LRP-0", "SIG-LID-XX"], folder, out, **kw)
    elif case == "empty":
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("no images here")
        with pytest.raises(ValueError, match="no image files"):
            X.run("probability-change", METHODS, empty, out, **kw)
    elif case == "unreadable":
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
        with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
            X.run("probability-change", METHODS, folder, out, **kw)
    elif case == "missing":
        with pytest.raises(ValueError, match="not found"):
            X.run("probability-change", METHODS, tmp_path / "nowhere", out, **kw)
    elif case == "regions":
        with pytest.raises(ValueError, match="needs object regions"):
            X.run("class-discrimination", METHODS, folder, out, **kw)
    elif case == "stage":
        with pytest.raises(ValueError, match="stage"):
            X.run("probability-change", METHODS, folder, out, stages=["s7"], **kw)
    elif case == "scorecam-multiscale":
        with pytest.raises(ValueError, match="ScoreCAM"):
            X.run("multiscale", ["ScoreCAM"], folder, out, **kw)
    elif case == "bad-input":   # an image the model cannot take (wrong size for its Linear layer)
        samples = [X.Sample("ok", torch.zeros(1, 3, SIZE, SIZE)), X.Sample("big", torch.zeros(1, 3, 40, 40))]
        with pytest.raises(ValueError, match="cannot take image 'big'"):
            X.run("probability-change", METHODS, samples, out, **kw)
    assert_no_files(tmp_path)


def test_foreign_or_mismatched_csv_is_left_untouched(folder, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="not a lidlib results file"):
        run(folder, out)
    assert out.read_text() == "a,b,c\n1,2,3\n"
    out.unlink()
    run(folder, out, methods=["LRP-0"], figure=False, limit=1)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="ratios|parameters"):
        run(folder, out, methods=["LRP-0"], figure=False, limit=1, ratios=(0.25, 0.5))
    other = toy_model()
    other.display_name = "another-model"
    with pytest.raises(ValueError, match="another-model"):
        X.run("probability-change", ["LRP-0"], folder, out, model=other, progress=False, figure=False, limit=1)
    assert out.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------------
# command line and the default source
# ---------------------------------------------------------------------------------------------------------------------

def test_cli_errors_exit_2_without_files(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert X.main(["probability-change", "--methods", "NoSuchMethod", "--out", str(out), "--no-progress",
                   "--images", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        X.main(["pixel-flip", "--methods", "LRP-0", "--out", str(out)])
    assert ex.value.code == 2
    assert_no_files(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lidlib.experiment", "minimal-patch", "--methods", "LRP-0",
                           "--images", str(tmp_path / "nowhere"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not found" in proc.stderr
    assert_no_files(tmp_path)


def test_cli_runs_on_the_offline_model(tmp_path, capsys):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray((lidlib.images.photo("coffee").permute(1, 2, 0).numpy() * 255).astype("uint8")).save(
        img_dir / "coffee.jpg")
    out = tmp_path / "r.csv"
    assert X.main(["probability-change", "--methods", "LayerCAM", "--images", str(img_dir), "--out", str(out),
                   "--ratios", "0.5", "--no-progress"]) == 0
    rows = rows_of(out)
    assert len(rows) == 2 and rows[1][0] == "coffee.jpg" and rows[1][1] == "967"      # espresso
    assert (tmp_path / "r.png").exists()
    assert "LayerCAM" in capsys.readouterr().out


def test_default_composites():
    from lidlib.models import imagenet
    model = imagenet()
    comps = X.composites(model, pairs=[("coffee", "chelsea")])
    assert [c.name for c in comps] == [f"coffee+chelsea/{l}" for l in X.LAYOUTS]
    halves = comps[0]
    ref, (ml, mr) = lidlib.images.composite("coffee", "chelsea")
    assert torch.allclose(halves.image, ref, atol=1e-6)
    assert torch.equal(halves.masks[0], ml) and torch.equal(halves.masks[1], mr)
    assert halves.classes[0] == 967 and halves.classes[1] != 967
    for c in comps:
        a, b = c.masks
        assert not (a & b).any() and a.any() and b.any()
        assert c.classes == halves.classes
    small = comps[-1]
    assert int(small.masks[1].sum()) == (3 * 224 // 8) ** 2
    assert torch.allclose(small.image[:, 0, -1], torch.full((3,), 0.5))         # neutral background
    per = X.composite_samples(model, comps[:1], per_object=True)
    assert [s.target for s in per] == list(halves.classes)
    assert torch.equal(per[0].region, per[1].other)


# ---------------------------------------------------------------------------------------------------------------------
# the configuration file, refusal on resume, write checks, the CLI's checks, the sample-recompute check
# ---------------------------------------------------------------------------------------------------------------------

def test_config_file_records_every_setting(folder, tmp_path):
    out = tmp_path / "r.csv"
    run(folder, out, methods=["LRP-0", "SG-LRP-0 (ε=0.01)"], figure=False, limit=1, n_steps=5, seed=3)
    cfg = X.read_config(out)
    st = cfg["settings"]
    assert st["n_steps"] == 5 and st["seed"] == 3 and st["fill"] == "reference" and st["baseline"] == "zeros"
    assert st["model"] == "toy-cnn" and st["input_size"] == SIZE and st["ratios"] == list(M.RATIOS)
    assert st["methods"]["LRP-0"]["eps"] == 1e-9 and st["methods"]["SG-LRP-0 (ε=0.01)"]["eps"] == 0.01
    assert st["image_set"]["n_images"] == 3 and st["image_set"]["source"] == str(folder.resolve())
    assert {r[3] for r in rows_of(out)[1:]} == {"LRP-0", "SG-LRP-0 (ε=0.01)"}


@pytest.mark.parametrize("change", ["n_steps", "seed", "fill", "eps", "images", "no-config"])
def test_resume_with_other_settings_is_refused(change, folder, tmp_path):
    out = tmp_path / "r.csv"
    run(folder, out, methods=["LRP-0", "SIG-LID-IG"], figure=False, limit=1)
    before = out.read_bytes()
    run(folder, out, methods=["LRP-0", "SIG-LID-IG"], figure=False, limit=2)      # same settings: resumes
    assert len(X.read_results(out).images()) == 2
    before = out.read_bytes()
    kw = dict(methods=["LRP-0", "SIG-LID-IG"], figure=False, limit=2)
    if change == "n_steps":
        kw["n_steps"] = 5
    elif change == "seed":
        kw["seed"] = 1
    elif change == "fill":
        kw["fill"] = "mean"
    elif change == "eps":                        # the same method name with another ε in the file
        cpath = X.config_path(out)
        text = cpath.read_text(encoding="utf-8").replace('"eps": 1e-09', '"eps": 0.001', 1)
        cpath.write_text(text, encoding="utf-8")
    elif change == "images":
        Image.fromarray(np.zeros((20, 20, 3), dtype="uint8")).save(folder / "im9.png")
    elif change == "no-config":
        X.config_path(out).unlink()
    with pytest.raises(ValueError, match="other settings|configuration file"):
        run(folder, out, **kw)
    assert out.read_bytes() == before


def test_unwritable_output_is_refused_before_any_work(folder, tmp_path, monkeypatch):
    model = toy_model()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    out = tmp_path / "r.csv"
    real = results.Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".lidlib-write-test"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)
    monkeypatch.setattr(results.Path, "write_bytes", refuse)
    with pytest.raises(ValueError, match="cannot write to the folder"):
        X.run("probability-change", METHODS, folder, out, model=model, progress=False)
    monkeypatch.setattr(results.Path, "write_bytes", real)
    out.write_text("")
    monkeypatch.setattr(results.os, "access", lambda p, mode: False)
    with pytest.raises(ValueError, match="read-only"):
        X.run("probability-change", METHODS, folder, out, model=model, progress=False)
    assert calls == []                           # the model never ran
    with pytest.raises(ValueError, match="does not exist"):
        X.check_writable(tmp_path / "no" / "r.csv")


def test_unwritable_folder_for_real(folder, tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder; the check is tested with a refusing filesystem above")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot write"):
            run(folder, ro / "r.csv")
    finally:
        ro.chmod(0o755)


def test_cli_checks_everything_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import lidlib.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(lidlib.models, "imagenet", no_model)
    out = tmp_path / "r.csv"
    for args, msg in ((["--methods", "NoSuch"], "unknown method"), (["--methods", "LRP-0", "--n-steps", "0"], "n-steps"),
                      (["--methods", "LRP-0", "--out", str(tmp_path / "no" / "r.csv")], "does not exist"),
                      (["--methods", "LRP-0", "--eval-set", "--images", str(tmp_path)], "not both"),
                      (["--methods", "LID-IG (ε=0.1)"], "unknown method")):
        argv = ["probability-change"] + args + ([] if "--out" in args else ["--out", str(out)])
        assert X.main(argv) == 2
        assert msg in capsys.readouterr().err
    assert_no_files(tmp_path)


def test_verify_sample_passes_and_fails_on_a_tampered_csv(folder, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    model = toy_model()
    X.run(["probability-change", "class-discrimination"][:1], ["LRP-0", "SIG-LID-IG", "LayerCAM"], folder, out,
          model=model, progress=False, figure=False)
    ok = X.verify_sample(out, model, source=folder, n_images=2, seed=0)
    assert ok["rows"] == 2 * 3 * len(M.RATIOS) and ok["max_abs_diff"] < 1e-9
    rows = rows_of(out)
    k = next(i for i, r in enumerate(rows) if i and r[0] in ok["images"] and r[3] == "SIG-LID-IG")
    rows[k][7] = repr(float(rows[k][7]) + 0.01)                      # one value moved by 0.01
    with open(out, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(X.SampleMismatch, match="SIG-LID-IG"):
        X.verify_sample(out, model, source=folder, n_images=2, seed=0)
    # the same moved value at a cut that float rounding decides (stand-in: every cut undecided) is counted, not compared
    from lidlib.evaluation import runner
    calls = []

    def every_cut(model_, smp, target, method, groups, cfg, explainers):
        calls.append((smp.name, method))
        return {}, {(g[2], p) for g in groups for p in g[3]}, {}

    monkeypatch.setattr(runner, "_other_arithmetic", every_cut)
    moved = X.verify_sample(out, model, source=folder, n_images=2, seed=0)
    assert moved["undecided"] == 1 and abs(moved["undecided_max_abs_diff"] - 0.01) < 1e-9
    assert moved["rows"] == ok["rows"] - 1 and calls == [(rows[k][0], "SIG-LID-IG")]
    # or any value that the other thread count moves by a tenth of the difference
    monkeypatch.setattr(runner, "_other_arithmetic", lambda model_, smp, target, method, groups, cfg, explainers: (
        {(r["metric"], r["stages"], r["param"]): float(r["value"]) + 0.0011
         for r in runner._compute(model_, smp, target, method, groups, cfg, {})}, set(), {}))
    assert X.verify_sample(out, model, source=folder, n_images=2, seed=0)["undecided"] == 1
    monkeypatch.setattr(runner, "_other_arithmetic", lambda model_, smp, target, method, groups, cfg, explainers: (
        {(r["metric"], r["stages"], r["param"]): float(r["value"]) + 0.0009
         for r in runner._compute(model_, smp, target, method, groups, cfg, {})}, set(), {}))
    with pytest.raises(X.SampleMismatch, match="SIG-LID-IG"):
        X.verify_sample(out, model, source=folder, n_images=2, seed=0)
    # or any value within a tenth of the difference times the heatmap's rounding relative to its maximum
    for rounding, passes in ((0.0011, True), (0.0009, False)):
        monkeypatch.setattr(runner, "_other_arithmetic", lambda model_, smp, target, method, groups, cfg, explainers: (
            {}, set(), {g[2]: rounding for g in groups}))
        if passes:
            assert X.verify_sample(out, model, source=folder, n_images=2, seed=0)["undecided"] == 1
        else:
            with pytest.raises(X.SampleMismatch, match="SIG-LID-IG"):
                X.verify_sample(out, model, source=folder, n_images=2, seed=0)
    other = toy_model()
    other.display_name = "another-net"
    with pytest.raises(X.SampleMismatch, match="model"):
        X.verify_sample(out, other, source=folder, n_images=1, seed=0)


def test_other_arithmetic_restores_the_thread_count(folder, tmp_path, monkeypatch):
    import torch

    from lidlib.evaluation import runner
    out = tmp_path / "r.csv"
    model = toy_model()
    X.run(["probability-change"], ["LRP-0"], folder, out, model=model, progress=False, figure=False)
    doc = X.read_config(out)
    st = doc["settings"]
    cfg = runner._Config(doc["metrics"], [], {m: list(v) for m, v in doc["stages"].items()}, tuple(st["ratios"]),
                         tuple(st["radii"]), st["fill"], int(st["n_copies"]), float(st["max_shift"]),
                         tuple(st["scale"]), st["n_steps"], None, int(st["seed"]))
    cfg.groups = runner._expected_groups(cfg)
    samples, targets = runner._validate_samples(runner._resolve_source(folder, model, False)[:1], model)
    n = torch.get_num_threads()
    explainers = {}
    rows = runner._compute(model, samples[0], targets[0], "LRP-0", cfg.groups, cfg, explainers)
    values, cuts, rounding = runner._other_arithmetic(model, samples[0], targets[0], "LRP-0", cfg.groups, cfg,
                                                       explainers)
    assert torch.get_num_threads() == n
    assert set(rounding) == {cfg.groups[0][2]} and 0 <= rounding[cfg.groups[0][2]] < 1e-5
    assert set(values) == {(r["metric"], r["stages"], r["param"]) for r in rows}
    assert max(abs(values[(r["metric"], r["stages"], r["param"])] - float(r["value"])) for r in rows) < 1e-6
    assert cuts <= {("input", p) for p in cfg.groups[0][3]} | {(cfg.groups[0][2], p) for p in cfg.groups[0][3]}
    monkeypatch.setattr(runner, "_compute", lambda *a: 1 / 0)            # failing half-way: threads restored
    with pytest.raises(ZeroDivisionError):
        runner._other_arithmetic(model, samples[0], targets[0], "LRP-0", cfg.groups, cfg, explainers)
    assert torch.get_num_threads() == n


def test_eval_set_has_200_distinct_images_with_disjoint_regions():
    from lidlib.models import imagenet
    model = imagenet()
    model.input_size = 96                        # small for speed; the layouts scale with the side
    try:
        s = X.eval_samples(model)
    finally:
        model.input_size = 224
    assert len(s) == len(lidlib.images.EVAL_PHOTOS) * (len(lidlib.images.EVAL_PHOTOS) - 1) * len(X.EVAL_LAYOUTS) >= 200
    assert len({x.name for x in s}) == len(s)
    flat = torch.stack([x.x.reshape(-1) for x in s])
    assert torch.unique(flat, dim=0).shape[0] == len(s)              # every image differs
    for x in s:
        assert x.region.any() and x.other.any() and not (x.region & x.other).any()
        assert x.target is not None
    assert s[0].name.endswith("/halves") and s[len(s) // len(X.EVAL_LAYOUTS)].name.endswith("/stacked")
