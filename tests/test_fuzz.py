"""Fuzzing the public boundary (issue 16.7): explanations, attacks, metrics, image specs, sweep configs and CLI
argument vectors. Every input either gives a result of the right shape that is finite, or a FragileError
subclass; never another exception type, and never NaN from finite input (except a metric's documented NaN for
an undefined pair, which comes with a DegenerateMapWarning).

Tiny models, derandomized hypothesis, no deadline; the counts (inputs tried, results, clear errors) are printed
at the end of the module (``-rA`` or ``-s`` is not needed: they go to the terminal reporter)."""

from __future__ import annotations

import collections
import contextlib
import math
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fragile import attacks
from fragile.errors import FragileError
from fragile.explanations import available, create

COUNTS: collections.Counter = collections.Counter()
MESSAGES: collections.defaultdict = collections.defaultdict(list)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [f"fuzz {area}: {COUNTS[area, 'tried']} inputs, {COUNTS[area, 'ok']} results, "
             f"{COUNTS[area, 'refused']} clear errors, 0 other exceptions"
             for area in sorted({a for a, _ in COUNTS})]
    total = [sum(v for (a, k), v in COUNTS.items() if k == kind) for kind in ("tried", "ok", "refused")]
    lines.append(f"fuzz total: {total[0]} inputs, {total[1]} results, {total[2]} clear errors, 0 other exceptions")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


def outcome(area: str, call):
    """Run ``call``; count a result or a FragileError; any other exception fails the test (re-raised)."""
    COUNTS[area, "tried"] += 1
    try:
        result = call()
    except FragileError as err:
        assert str(err).strip(), "a FragileError must say something"
        COUNTS[area, "refused"] += 1
        MESSAGES[area].append(str(err)[:90])
        return None
    COUNTS[area, "ok"] += 1
    return result


def finite(t) -> bool:
    return isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all())


# -- tiny models ------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """conv - relu - maxpool - conv - adaptive avgpool - linear; returns its logits as ``wrap`` says."""

    def __init__(self, wrap: str = "tensor", classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc, self.wrap = nn.Linear(4, 1 if wrap == "binary" else classes), wrap

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, ceil_mode=True)
        y = self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(h)), 1).flatten(1))
        if self.wrap == "tuple":
            return y, h
        if self.wrap == "dict":
            return {"logits": y}
        if self.wrap == "binary":
            return y[:, 0]
        return y


MODELS = {name: Tiny(wrap).eval() for name, wrap in
          (("tensor", "tensor"), ("tuple", "tuple"), ("dict", "dict"), ("binary", "binary"))}
MODELS["float64"] = Tiny().double().eval()
MODELS["half"] = Tiny().half().eval()
MODELS["linear"] = nn.Sequential(nn.Flatten(), nn.LazyLinear(3)).eval()  # no conv: Grad-CAM must refuse

SPECIAL = st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.0, 1e30, -1e30, 1e-30, float("nan"), float("inf"), -float("inf")])
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=6), st.lists(st.integers(-2, 5), max_size=5), st.sampled_from(["auto", "zeros"]))


@st.composite
def mostly(draw, valid, *unusual, p: float = 0.8):
    """``valid`` with probability ``p``, else one of ``unusual``."""
    if not unusual or draw(st.randoms(use_true_random=False)).random() < p:
        return draw(valid)
    return draw(st.one_of(*unusual))


@st.composite
def images(draw, max_side: int = 9):
    """(N, C, H, W) pixel tensors in [0, 1] at 3 channels, float32 or float64; about one in three has one
    oddity: a special value (NaN, inf, 1e30), another dtype, channel count, size or rank."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(2, max_side)), draw(st.integers(2, max_side))
    odd = draw(mostly(st.just("none"), st.sampled_from(["special", "dtype", "channels", "rank", "small"])))
    c = draw(st.sampled_from([1, 4])) if odd == "channels" else 3
    if odd == "small":
        h = w = 1
    seed = draw(st.integers(0, 2**16))
    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    x = x.double() if draw(st.booleans()) else x
    if odd == "special":
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(SPECIAL)
    if odd == "dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.int64, torch.bool]))
        x = (x * 255).to(dtype) if dtype in (torch.int64, torch.bool) else x.to(dtype)
    if odd == "rank":
        x = draw(st.sampled_from([x[0], x[None], x.flatten()]))
    return x


TARGETS = mostly(st.none(), st.integers(-2, 4), st.lists(st.integers(-1, 3), min_size=1, max_size=4), st.just(1.5),
                 st.just("cat"))

METHOD_PARAMS = {
    "integrated_gradients": {"steps": st.one_of(st.integers(-1, 4), st.just("x"), st.just(2.5)),
                             "baseline": st.one_of(st.sampled_from(["zeros", "pixel_mean", "bogus"]), SPECIAL),
                             "rule": st.sampled_from(["right", "trapezoid", "simpson"])},
    "smoothgrad": {"samples": st.one_of(st.integers(-1, 3), st.just("x")), "scale": st.one_of(SPECIAL, st.just("x")),
                   "method": st.sampled_from(["gradient", "lrp", "integrated_gradients", "nope"]),
                   "noise_mode": st.sampled_from(["fresh", "fixed", "warm"]), "seed": st.one_of(st.integers(-2, 5),
                                                                                             st.just(1.5))},
    "uniform_gradient": {"samples": st.integers(-1, 3), "radius": SPECIAL},
    "lrp": {"rule": st.sampled_from(["zplus", "epsilon", "z", "zb", "alpha1beta0", "bogus"]),
            "first_rule": st.sampled_from([None, "zb", "epsilon", "bogus"]), "epsilon": SPECIAL,
            "low": SPECIAL, "high": SPECIAL},
    "deeplift": {"baseline": st.one_of(st.sampled_from(["zeros", "channel_mean", "bogus"]), SPECIAL)},
    "grad_cam": {"layer": st.sampled_from([None, "conv1", "conv2", "fc", "nope"]),
                 "upsample": st.sampled_from(["bilinear", "nearest", "cubic"]), "relu": st.booleans()},
    "pattern_attribution": {"data": st.sampled_from([None, "images"])},
}
COMMON = {"output": mostly(st.sampled_from(["logit", "softmax", "log_softmax"]), st.just("probit")),
          "smooth_beta": mostly(st.sampled_from([None, 1.0, 10.0]), SPECIAL, st.just("x"))}


@st.composite
def method_and_params(draw):
    name = draw(st.sampled_from(available()))
    options = {**COMMON, **METHOD_PARAMS.get(name, {})}
    keys = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=3))
    params = {k: draw(options[k]) for k in keys}
    if name in ("smoothgrad", "uniform_gradient"):
        params.setdefault("samples", 2)
    if name == "integrated_gradients":
        params.setdefault("steps", 3)
    if params.get("data") == "images":
        params["data"] = torch.rand(6, 3, 6, 6)
    if params.get("method") == "integrated_gradients":
        params["method_params"] = {"steps": 2}
    if draw(st.integers(0, 9)) == 9:
        params["unknown_parameter"] = 1
    return name, {k: v for k, v in params.items() if v is not None or k in ("first_rule", "layer")}


@settings(FUZZ, max_examples=120)
@given(method=method_and_params(), model=st.sampled_from(sorted(MODELS)), x=images(), target=TARGETS,
       create_graph=st.booleans())
def test_fuzz_explanations(method, model, x, target, create_graph):
    name, params = method
    net = MODELS[model]

    def call():
        explainer = create(name, net, **params)
        xa = x.clone().requires_grad_(True) if create_graph and x.is_floating_point() and x.dim() == 4 else x
        h = explainer.attribute(xa, target=target, create_graph=create_graph)
        if create_graph and xa.requires_grad and h.requires_grad:
            (g,) = torch.autograd.grad(h.pow(2).sum(), xa, allow_unused=True)
            in_range = finite(x) and float(x.min()) >= -1 and float(x.max()) <= 2  # 1e30 pixels may overflow
            assert g is None or finite(g) or not in_range, "NaN gradient of a map"
        return h

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = outcome("explanations", call)
    if h is not None:
        assert h.shape == x.shape, (name, params, tuple(x.shape), tuple(h.shape))
        assert finite(h), (name, params, model)


@settings(FUZZ, max_examples=50)
@given(x=images(max_side=6), model=mostly(st.sampled_from(["tensor", "tuple", "dict", "binary", "float64"]),
                                          st.just("half"), p=0.95),
       objective=mostly(st.sampled_from(["topk", "mass_center", "random_sign", "random_sign_search", "map_distance",
                                         "relative_map_change"]), st.just("bogus"), p=0.95),
       eps=mostly(st.sampled_from([8, 2.0, [2, 4]]), st.sampled_from([0, -1, 300, float("nan"), "8", True, []]), p=0.95),
       steps=mostly(st.integers(1, 2), st.sampled_from([0, -1, 1.5]), p=0.95),
       step=mostly(st.sampled_from([None, None, "sign", "adam", "gradient", "random"]), st.just("bogus"), p=0.95),
       norm=mostly(st.sampled_from(["linf", "l2"]), st.just("l3"), p=0.95),
       beta=mostly(st.sampled_from([10.0, 1.0, (1.0, 10.0), "auto", None]),
                   st.sampled_from([0.0, -1.0, "x", (1.0,), float("nan")]), p=0.95),
       k=mostly(st.sampled_from([None, 1, 5]), st.sampled_from([0, 10_000, 2.5]), p=0.95),
       method=st.sampled_from(["gradient", "integrated_gradients", "smoothgrad", "lrp"]), target=TARGETS,
       step_size=mostly(st.sampled_from([0.5, 2.0]), st.sampled_from([0.0, -1.0, float("inf"), "x"]), p=0.95))
def test_fuzz_attacks(x, model, objective, eps, steps, step, norm, beta, k, method, target, step_size):
    net = MODELS[model]
    params = {"steps": 2} if method == "integrated_gradients" else {"samples": 2} if method == "smoothgrad" else {}

    def call():
        return attacks.run(net, create(method, net, **params), x, objective, eps=eps, steps=steps, step=step,
                           norm=norm, beta=beta, k=k, target=target, step_size=step_size)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = outcome("attacks", call)
    for r in ([] if result is None else result if isinstance(result, list) else [result]):
        assert r.x_adv.shape == x.shape and finite(r.x_adv) and finite(r.maps) and finite(r.maps_adv)
        for name, values in r.metrics.items():
            assert values.shape == (x.shape[0],)
            assert bool((torch.isfinite(values) | ~r.success).all()) or name in ("ssim", "image_ssim", "spearman",
                                                                                   "pcc", "cosine_distance",
                                                                                   "center_shift"), name


@st.composite
def map_pairs(draw):
    n = draw(st.integers(1, 3))
    shape = (n, *draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["rand", "rand", "const", "zero", "tiny", "huge", "neg", "int", "special"]))
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "const":
        a = torch.ones(shape, dtype=torch.float64)
    elif kind == "zero":
        a, b = torch.zeros(shape, dtype=torch.float64), b * draw(st.sampled_from([0, 1]))
    elif kind == "tiny":
        a, b = a * 1e-300, b * 1e-300
    elif kind == "huge":
        a, b = a * 1e300, b * 1e300
    elif kind == "neg":
        a = a - 0.5
    elif kind == "int":
        a, b = (a * 10).long(), (b * 10).long()
    elif kind == "special":
        a.view(-1)[0] = draw(SPECIAL)
    if draw(st.integers(0, 6)) == 6:
        b = b[..., :-1] if b.shape[-1] > 1 else b[None]
    if draw(st.integers(0, 8)) == 8:
        b = b.tolist()
    return a, b


@settings(FUZZ, max_examples=200)
@given(pair=map_pairs(), metric=st.sampled_from(["spearman", "topk_intersection", "center_shift", "cosine_distance",
                                                 "pcc", "ssim", "mse"]),
       k=st.sampled_from([1, 5, 0, -1, 10_000, 2.5]))
def test_fuzz_metrics(pair, metric, k):
    from fragile import metrics
    from fragile.metrics import DegenerateMapWarning

    a, b = pair
    fn = getattr(metrics, metric)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = outcome("metrics", lambda: fn(a, b, k) if metric == "topk_intersection" else fn(a, b))
    if value is not None:
        assert value.shape == (a.shape[0],)
        degenerate = any(issubclass(w.category, DegenerateMapWarning) for w in caught)
        assert finite(value) or degenerate, (metric, value)


SPEC_PARTS = st.sampled_from(["cifar10", "imagenet", "foolbox", "cifar100", "mnist", "fashionMNIST", "nope", "",
                              "3", "0", "-1", "2", "abc", "seed=3", "seed=-1", "seed=x", "1.5", "tests", "/nonexistent"])


@settings(FUZZ, max_examples=100)
@given(spec=mostly(st.sampled_from(["foolbox:cifar10", "foolbox:mnist", "cifar10:3", "cifar10:2:seed=1", "imagenet:1",
                                    "FOLDER", "FOLDER:2", "FOLDER:1:seed=4"]),
                   st.lists(SPEC_PARTS, min_size=1, max_size=4).map(":".join)),
       size=mostly(st.sampled_from([None, (32, 32), (8, 8)]), st.sampled_from([(0, 5), (-1, 3), "x"])),
       resize=mostly(st.sampled_from([None, "center_crop", "squash"]), st.just("bogus")),
       channels=mostly(st.sampled_from([None, 1, 3]), st.sampled_from([2, 0, "x"])))
def test_fuzz_image_specs(spec, size, resize, channels, tmp_path_factory):
    from PIL import Image

    from fragile.data import load_image_set

    if "FOLDER" in spec:
        folder = tmp_path_factory.mktemp("images")
        for i, (mode, side) in enumerate([("RGB", 8), ("L", 8), ("RGBA", 8), ("RGB", 10)]):
            (folder / f"c{i % 2}").mkdir(exist_ok=True)
            Image.new(mode, (side, side), 128).save(folder / f"c{i % 2}" / f"{i}.png")
        spec = spec.replace("FOLDER", str(folder))
    if spec.startswith("imagenet") or spec.startswith("foolbox:imagenet"):
        size = size or (8, 8)  # keep the photos small
    images = outcome("image specs", lambda: load_image_set(spec, size=size, resize=resize, channels=channels))
    if images is not None:
        assert images.x.dim() == 4 and len(images.ids) == len(images.x) and finite(images.x)
        assert float(images.x.min()) >= 0 and float(images.x.max()) <= 1
        if images.labels is not None:
            assert images.labels.shape == (len(images.x),)


CONFIG_VALUES = {
    "name": mostly(st.just("fuzz"), st.integers(), st.just("")),
    "model": mostly(st.just("resnet20_cifar10"), st.sampled_from([5, {"spec": 3}, {"spec": "x", "bogus": 1}])),
    "images": mostly(st.sampled_from(["cifar10:4", "foolbox:cifar10", "imagenet:2:seed=1"]),
                     st.sampled_from(["cifar10:-1", "cifar10:0", "foolbox:x", "imagenet:abc", 5]), st.text(max_size=6)),
    "limit": mostly(st.sampled_from([None, 1, 4]), ANY_VALUE), "batch_size": mostly(st.integers(1, 8), ANY_VALUE),
    "seeds": mostly(st.sampled_from([0, [0, 1], [3]]), ANY_VALUE), "eps": mostly(st.sampled_from([8, [2, 4], 1.5]), ANY_VALUE),
    "threads": mostly(st.sampled_from([None, 1, 2]), ANY_VALUE),
    "correct_only": mostly(st.booleans(), ANY_VALUE), "store_arrays": mostly(st.booleans(), ANY_VALUE),
    "faithfulness": mostly(st.booleans(), ANY_VALUE),
    "resize": mostly(st.sampled_from([None, "center_crop", "squash"]), ANY_VALUE),
    "methods": mostly(st.sampled_from(["gradient", ["gradient", "lrp"], [{"name": "lrp", "rule": "z"}],
                                       [{"name": "smoothgrad", "samples": 2, "method": "lrp"}]]),
                      ANY_VALUE, st.sampled_from([[{"name": "integrated_gradients", "stepz": 1}], [{"rule": 1}]])),
    "attacks": mostly(st.sampled_from(["topk", [{"name": "targeted", "region": [0, 4, 0, 4]}], ["random_sign", "mass_center"],
                                       [{"name": "manipulate", "output_tol": 0.1}]]),
                      ANY_VALUE, st.sampled_from([[{"name": "targeted", "region": [4, 0]}], [{"name": "topk", "k": 0}]])),
    "defences": mostly(st.sampled_from(["none", [{"name": "beta", "beta": 2.0}], [{"name": "smoothgrad", "samples": 3}]]),
                       ANY_VALUE, st.sampled_from([[{"name": "beta", "beta": -1}], [{"name": "smoothgrad", "x": 1}]])),
    "attack_settings": mostly(st.dictionaries(st.sampled_from(["steps", "beta", "norm", "k"]),
                                              st.sampled_from([1, 10.0, "linf", 3]), max_size=2),
                              ANY_VALUE, st.dictionaries(st.sampled_from(["steps", "step", "step_size", "lr", "norm",
                                                                          "beta", "early_stop", "reduce", "pixel_scale",
                                                                          "k", "bogus"]), ANY_VALUE, max_size=3)),
}


@settings(FUZZ, max_examples=200)
@given(raw=st.fixed_dictionaries({}, optional=CONFIG_VALUES), extra=mostly(st.just({}), st.just({"bogus_key": 1})))
def test_fuzz_config(raw, extra):
    from fragile.experiments.config import config_hash, resolve

    cfg = outcome("configs", lambda: resolve({**raw, **extra}))
    if cfg is not None:
        assert isinstance(config_hash(cfg), str)
        assert cfg["limit"] is None or (isinstance(cfg["limit"], int) and cfg["limit"] >= 1)
        assert all(isinstance(e, float) and 0 < e <= 255 for e in cfg["eps"])
        assert all(isinstance(s, int) for s in cfg["seeds"]) and cfg["batch_size"] >= 1


def _tiny_fragile_model(*args, **kwargs):
    from fragile.models import Preprocessed

    model = Preprocessed(Tiny(), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    model.input_size, model.class_names, model.channels = (32, 32), tuple(f"c{i}" for i in range(3)), 3
    return model


def _options(**choices):
    """{option: strategy of its value (a string; spaces separate tokens), or None for a flag}."""
    return choices


def _v(valid: list[str], odd: list[str]):
    return mostly(st.sampled_from(valid), st.sampled_from(odd))


ATTACK_OPTIONS = _options(**{
    "--method": _v(["gradient", "lrp", "integrated_gradients", "smoothgrad"], ["nope", ""]),
    "--attack": _v(["topk", "mass_center", "random_sign", "targeted", "manipulate", "random_sign_search"], ["bogus"]),
    "--eps": _v(["8", "2 4"], ["-1", "300", "nan", "x"]), "--steps": _v(["1", "2"], ["0", "-1", "x"]),
    "--norm": _v(["linf", "l2"], ["l3"]), "--beta": _v(["auto", "none", "10"], ["0", "-1", "x"]),
    "--k": _v(["5", "20"], ["0", "100000"]), "--region": _v(["0 4 0 4", "2 30 2 30"], ["4 0 0 4", "0 0 0 0", "a b c d"]),
    "--images": _v(["foolbox:cifar10", "cifar10:3"], ["cifar10:-1", "/nonexistent", "foolbox:x"]),
    "--device": _v(["cpu"], ["tpu", "cuda:7"]), "--step": _v(["sign", "random", "adam"], ["bogus"]),
    "--seed": _v(["0", "3"], ["-1", "x"]), "--step-size": _v(["0.5", "2"], ["0", "-1", "inf"]),
    "--resize": _v(["center_crop", "squash"], ["bogus"]), "--size": _v(["32", "32 32"], ["0", "-3", "x"]),
})
RUN_OPTIONS = _options(**{
    "--set": _v(["limit=2", "attack_settings.steps=1", "eps=[2]", "methods=[gradient]"],
                ["limit=0", "limit", "eps=abc", "methods=[{name: lrp, rul: 1}]", "=3", "seeds=[1.5]"]),
    "--limit": _v(["2"], ["0", "-1", "x"]), "--reduced": None, "--workers": _v(["1"], ["0"]),
    "--executor": _v(["inprocess"], ["bogus"]), "--device": _v(["cpu"], ["tpu"]),
})


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory):
    """A small stored sweep (tiny model, four images) for report / export / summarize."""
    from fragile.data import Images
    from fragile.experiments.config import resolve
    from fragile.experiments.runner import run_sweep

    path = tmp_path_factory.mktemp("cli-store") / "store"
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = resolve({"name": "fuzz", "images": "in-memory", "methods": ["gradient"], "attacks": ["random_sign"],
                   "eps": [8], "correct_only": False, "attack_settings": {"steps": 1}})
    run_sweep(cfg, path, model=_tiny_fragile_model(), images=Images(x, None, tuple(f"i{i}" for i in range(4))),
              show_progress=False, log=lambda *a: None)
    return path


@st.composite
def argvs(draw, store, tmp):
    command = draw(mostly(st.sampled_from(["methods", "attack", "run", "report", "summarize", "results"]),
                          st.sampled_from(["bogus", "--help", ""])))
    where = draw(mostly(st.just(str(store)), st.sampled_from([str(tmp / "missing"), str(tmp), "nope"])))
    out = draw(mostly(st.just(str(tmp / "out")), st.just(str(tmp / "no" / "such" / "out"))))
    options = {"attack": ATTACK_OPTIONS, "run": RUN_OPTIONS}.get(command, {})
    argv = [command] if command else []
    if command == "run":
        if draw(st.integers(0, 9)) == 9:
            return ["run", "--list"]
        argv += [draw(_v(["audit-default", "ghorbani-fig6-angles", "dombrowski-fig3-manipulate"], ["nope", ""])),
                 "--dry-run"]
    elif command in ("report", "summarize"):
        argv.append(where)
        if command == "report" and draw(st.booleans()):
            argv += ["-o", out + ".html"]
    elif command == "results":
        argv += ["export", where, "-o", out + ".csv"]
        if draw(st.booleans()):
            argv += ["--format", draw(_v(["csv", "parquet"], ["bogus"]))]
    for opt in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4)) if options else []:
        argv.append(opt)
        if options[opt] is not None:
            argv += draw(options[opt]).split(" ")
    if command == "attack":  # keep the runs tiny: few images and steps on a tiny model
        argv += ["--limit", "2", "--out", out] + ([] if "--steps" in argv else ["--steps", "1"])
    return argv


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzz_cli(data, cli_store, tmp_path_factory):
    from fragile.cli import main

    tmp = tmp_path_factory.mktemp("cli")
    argv = data.draw(argvs(cli_store, tmp))
    COUNTS["cli", "tried"] += 1
    with mock.patch("fragile.models.load", _tiny_fragile_model), \
            mock.patch("fragile.experiments.runner.load_model", _tiny_fragile_model), \
            mock.patch("fragile.reporting.attack_panel", lambda *a, **k: None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
            code = exit_.code
            assert code in (0, 2), argv
    assert code in (0, 1, 2), (argv, code)
    COUNTS["cli", "refused" if code else "ok"] += 1
    MESSAGES["cli"].append(f"{code} {' '.join(argv[:2])}")


def test_fuzz_counts_are_consistent():
    for area in {a for a, _ in COUNTS}:
        assert COUNTS[area, "ok"] + COUNTS[area, "refused"] == COUNTS[area, "tried"]
    assert not math.isnan(sum(COUNTS.values()))

