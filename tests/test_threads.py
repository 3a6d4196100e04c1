"""One model explained from several threads: every call equals a sequential call, bit for bit, and the
model is left unchanged.  Explanations of one model are serialised by its lock; different models run
in parallel (lidlib.engine.exclusive)."""
import threading

import pytest
import torch
from test_reliability import _assert_same, _inplace_cnn, _state
from torch import nn

import lidlib
from lidlib import toy
from lidlib.methods import METHODS

CALLS = 20
LAYERS = {"GradCAM": ["2", "5"], "LayerCAM": ["2", "5"], "ScoreCAM": ["5"], "IG": ["2", "5"]}


def _inputs(n):
    g = torch.Generator().manual_seed(n)
    return [(torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), torch.tensor([i % 4, (i + 1) % 4]))
            for i in range(n)]


def _run_threads(n_threads, work):
    """Start ``n_threads`` threads together on ``work(i)``; re-raise the first error of any thread."""
    start = threading.Barrier(n_threads)
    errors = []

    def body(i):
        try:
            start.wait(timeout=30)
            work(i)
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    if errors:
        raise errors[0]


def _same(a, b):
    assert list(a.relevance) == list(b.relevance)
    assert all(torch.equal(a.relevance[k], b.relevance[k]) for k in a.relevance)


@pytest.mark.parametrize("n_threads", [2, 4])
@pytest.mark.parametrize("method", list(METHODS))
def test_threads_explaining_one_model_equal_sequential_calls(method, n_threads):
    model = _inplace_cnn()
    before = _state(model)
    inputs = _inputs(n_threads)
    kw = dict(layers=LAYERS.get(method), baseline=0.2, n_steps=3)
    expected = [lidlib.explain(model, x, t, method, **kw) for x, t in inputs]
    results = [[] for _ in inputs]

    def work(i):
        x, t = inputs[i]
        for _ in range(CALLS):
            results[i].append(lidlib.explain(model, x, t, method, **kw))
    _run_threads(n_threads, work)
    for want, got in zip(expected, results):
        assert len(got) == CALLS
        for e in got:
            _same(e, want)
    _assert_same(before, _state(model))


@pytest.mark.parametrize("method", ["SIG-LID-IG", "LRP-0", "GradCAM"])
def test_threads_sharing_one_explainer(method):
    model = _inplace_cnn()
    before = _state(model)
    explainer = lidlib.Explainer(model, method, layers=LAYERS.get(method), baseline=0.2, n_steps=3)
    inputs = _inputs(4)
    expected = [lidlib.explain(model, x, t, method, layers=LAYERS.get(method), baseline=0.2, n_steps=3)
                for x, t in inputs]
    results = [[] for _ in inputs]

    def work(i):
        for _ in range(CALLS):
            results[i].append(explainer(*inputs[i]))
    _run_threads(4, work)
    for want, got in zip(expected, results):
        for e in got:
            _same(e, want)
    assert explainer.reference_passes <= 1
    _assert_same(before, _state(model))


def test_baseline_functions_from_threads():
    """The functions of lidlib.baselines take the same lock."""
    from lidlib import comparison as baselines
    model = _inplace_cnn()
    before = _state(model)
    inputs = _inputs(4)
    fns = [lambda x, t: baselines.integrated_gradients(model, x, t, 0.1, 4),
           lambda x, t: baselines.gradcam(model, x, t, "2"),
           lambda x, t: baselines.layercam_multiscale(model, x, t, ["2", "5"]),
           lambda x, t: baselines.scorecam(model, x, t, "5")]
    expected = [[f(x, t) for f in fns] for x, t in inputs]
    results = [[] for _ in inputs]

    def work(i):
        for _ in range(5):
            results[i].append([f(*inputs[i]) for f in fns])
    _run_threads(4, work)
    for want, got in zip(expected, results):
        for maps in got:
            assert all(torch.equal(a, b) for a, b in zip(maps, want))
    _assert_same(before, _state(model))


def test_different_models_run_in_parallel():
    """Two models are explained at the same time: each one's forward waits (in a user hook) until the
    other thread is inside its own forward too, which could not happen if all explanations were
    serialised; the results equal sequential calls."""
    models = [toy.cnn(in_channels=2, size=8, classes=4, seed=s) for s in (1, 2)]
    inputs = _inputs(2)
    expected = [lidlib.explain(m, *inp, "SIG-LID-IG") for m, inp in zip(models, inputs)]
    meet = threading.Barrier(2)
    met = []

    def hook(module, args, output):
        if not met:
            meet.wait(timeout=30)            # BrokenBarrierError here would fail the test
            met.append(True)
    handles = [m[0].register_forward_hook(hook) for m in models]
    results = [None, None]

    def work(i):
        results[i] = lidlib.explain(models[i], *inputs[i], "SIG-LID-IG")
    try:
        _run_threads(2, work)
    finally:
        for h in handles:
            h.remove()
    assert met
    for want, got in zip(expected, results):
        _same(got, want)


@pytest.mark.parametrize("method", ["SIG-LID-IG", "LID-Taylor", "LRP-0", "GradCAM"])
@pytest.mark.parametrize("hooked_layer", ["3", "9"])
def test_the_model_run_by_another_thread_during_an_explanation_is_the_plain_model(method, hooked_layer):
    """While one thread explains, another runs the model itself (forward and gradient): it gets the
    plain model's logits and input gradient bit for bit — lidlib's hooks, its rerouted max-pool
    forward and the CAM capture act only in the explaining thread — and the explanation equals one
    made alone.  The other thread runs to completion inside the explanation (from a user's hook)."""
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1).double()
    (x, t), (x2, _) = _inputs(2)
    kw = dict(layers=LAYERS.get(method), baseline=0.2, n_steps=3)

    def plain(inp):
        inp = inp.clone().requires_grad_(True)
        z = model(inp)
        return z.detach(), torch.autograd.grad(z[:, 1].sum(), inp)[0]
    alone, expected = lidlib.explain(model, x, t, method, **kw), plain(x2)
    before = _state(model)
    explaining, seen = threading.get_ident(), {}

    def meanwhile(module, args, out):
        if threading.get_ident() == explaining and not seen:
            other = threading.Thread(target=lambda: seen.setdefault("plain", plain(x2)))
            other.start()
            other.join(timeout=60)
    handle = model[int(hooked_layer)].register_forward_hook(meanwhile)
    try:
        e = lidlib.explain(model, x, t, method, **kw)
    finally:
        handle.remove()
    z, g = seen["plain"]
    assert torch.equal(z, expected[0]) and torch.equal(g, expected[1])
    _same(e, alone)
    _assert_same(before, _state(model))


@pytest.mark.parametrize("method", ["SIG-LID-IG", "LRP-0"])
def test_two_models_sharing_an_inplace_layer_explained_at_once(method):
    """Two models share an in-place ReLU; B's explanation starts while A's runs and goes on after A's
    has ended: the flag stays off until the last explanation using the layer ends (else A would switch
    it back on under B, whose ReLU would then overwrite its own input), both equal sequential calls,
    and the flag is restored afterwards."""
    torch.manual_seed(3)
    shared = nn.ReLU(inplace=True)
    a = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), shared, nn.Flatten(), nn.Linear(192, 4)).double().eval()
    b = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), shared, nn.Flatten(), nn.Linear(192, 4)).double().eval()
    (x, t), = _inputs(1)
    kw = dict(baseline=0.2, n_steps=3)
    want_a, want_b = lidlib.explain(a, x, t, method, **kw), lidlib.explain(b, x, t, method, **kw)
    b_inside, a_done, got = threading.Event(), threading.Event(), {}

    def b_waits(module, args, out):             # inside B's explanation: wait until A's has ended
        if not b_inside.is_set():
            b_inside.set()
            a_done.wait(timeout=60)

    def a_starts_b(module, args, out):          # inside A's explanation: start B's, and let A go on
        if "thread" not in got:
            got["thread"] = threading.Thread(target=lambda: got.setdefault("b", lidlib.explain(b, x, t, method, **kw)))
            got["thread"].start()
            b_inside.wait(timeout=60)
    handles = [b[0].register_forward_hook(b_waits), a[0].register_forward_hook(a_starts_b)]
    try:
        got["a"] = lidlib.explain(a, x, t, method, **kw)
        a_done.set()
        got["thread"].join(timeout=60)
    finally:
        a_done.set()
        for h in handles:
            h.remove()
    _same(got["a"], want_a)
    _same(got["b"], want_b)
    assert vars(shared)["inplace"] is True
