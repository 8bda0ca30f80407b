"""Any PyTorch model, by one spec: ``fragile.models.load(spec, weights=..., mean=..., ...)``.

``spec`` is one of

- a registry name (``resnet20_cifar10``; pretrained weights, or ``weights=`` a state_dict file);
- a fragile checkpoint file (written by ``fragile train``);
- ``torchvision:NAME`` / ``timm:NAME``: the library's model with its own preprocessing (torchvision's
  weights transforms, timm's resolved data config: mean, std, input size) and class names;
- ``path/to/file.py:Factory`` or ``package.module:Factory``: ``Factory(**model_args)`` with the weights of
  the state_dict file ``weights`` (a ``module.`` prefix, ``{'state_dict': ...}`` wrappers accepted);
- a pickled whole model (``torch.save(model)``), only with ``trust_pickle=True``: unpickling runs
  arbitrary code from the file.

CLI (``--model --weights --model-arg --mean --std --bounds --classes --size --channels --trust-pickle``)
and sweep YAML (``model:`` as a string or a mapping of :data:`CONFIG_KEYS`) go through :func:`load`.

A user's network is wrapped in :class:`~fragile.models.Preprocessed`, so it takes raw pixels in [0, 1],
like every registry model: ``model(x) = net((lo + (hi - lo) * x - mean) / std)`` with ``bounds = (lo, hi)``
the pixel range the network expects before normalisation (``(0, 255)`` for a network fed 0..255 pixels;
``mean`` and ``std`` are in that range's units). The returned model carries ``bounds`` (always (0, 1): the
range attacks and explanations work in), ``input_size`` (H, W) or None, ``class_names`` or None,
``channels``, ``preprocessing`` (mean, std, pixel range as given) and ``source`` (spec, weights file and
its SHA-256).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.models.download import sha256
from fragile.models.outputs import check_finite_weights
from fragile.models.preprocessing import Normalize, Preprocessed

#: keys of the ``model:`` mapping in a sweep config (the keyword arguments of :func:`load`)
CONFIG_KEYS = ("spec", "weights", "model_args", "mean", "std", "bounds", "classes", "size", "channels", "trust_pickle")

_FACTORY = re.compile(r"^(?P<module>.+):(?P<attr>[A-Za-z_]\w*)$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

PICKLE_REFUSED = ("{path} is a pickled whole model (torch.save(model)). Unpickling runs whatever code the file "
                  "names, so fragile loads it only when you trust the file: pass --trust-pickle (YAML: "
                  "trust_pickle: true). Safer: save model.state_dict() and give the architecture as "
                  "--model path/to/file.py:Factory --weights state_dict.pt")


def load(spec: str, *, weights: str | Path | None = None, model_args: dict | None = None,
         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
         bounds: Sequence[float] | None = None, classes: Sequence[str] | str | None = None,
         size: Sequence[int] | int | None = None, channels: int | None = None,
         trust_pickle: bool = False) -> nn.Module:
    """The model of ``spec`` (see the module docstring), in eval mode, taking raw pixels in [0, 1].

    ``classes``: names, or a file with one name per line, or a comma-separated string; ``size``: H or (H, W)
    (the input size images are resized to); ``channels``: the network's input channels (default: the
    first Conv2d's, else the length of ``mean``, else 3). Raises :class:`FragileError` naming any problem."""
    if not isinstance(spec, str) or not spec:
        raise FragileError(f"a model spec must be a non-empty string, got {spec!r}")
    model_args = dict(model_args or {})
    if not isinstance(model_args, dict) or not all(isinstance(k, str) for k in model_args):
        raise FragileError(f"model_args must be a mapping of names to values, got {model_args!r}")
    prep = {"mean": mean, "std": std, "bounds": bounds, "channels": channels}
    weights = None if weights is None else Path(weights)
    if weights is not None and not weights.is_file():
        raise FragileError(f"weights file {weights} does not exist")
    source: dict[str, Any] = {"spec": spec}
    if weights is not None:
        source.update(weights=str(weights), weights_sha256=sha256(weights))
    kind, net, defaults = _build(spec, weights, model_args, trust_pickle)
    source["kind"] = kind
    if isinstance(net, Preprocessed):  # registry models, fragile checkpoints: preprocessing already inside
        given = sorted(k for k, v in prep.items() if v is not None)
        if given:
            raise FragileError(f"{spec!r} carries its own preprocessing; --{', --'.join(given)} cannot change it "
                               "(only --classes and --size can be set for it)")
        model = net
    else:
        model = _wrap(net, defaults, prep)
    if classes is not None:
        model.class_names = parse_classes(classes)
    elif defaults.get("class_names") and getattr(model, "class_names", None) is None:
        model.class_names = tuple(defaults["class_names"])
    if size is not None:
        model.input_size = parse_size(size)
    model.input_size = getattr(model, "input_size", None)
    model.class_names = getattr(model, "class_names", None)
    model.channels = getattr(model, "channels", None) or channels_of(model)
    model.source = source
    check_finite_weights(model, f"model {spec!r}" + (f" with weights {weights}" if weights is not None else ""))
    _probe(model, spec)
    return model.eval()


# -- what the spec names ----------------------------------------------------------------------------
def _build(spec: str, weights: Path | None, model_args: dict, trust_pickle: bool) -> tuple[str, nn.Module, dict]:
    """(kind, network or wrapped model, default preprocessing {mean, std, input_size, class_names})."""
    from fragile.models.registry import available, create

    if spec.startswith("torchvision:"):
        net, defaults = torchvision_model(spec.split(":", 1)[1], weights=weights, model_args=model_args)
        return "torchvision", net, defaults
    if spec.startswith("timm:"):
        net, defaults = timm_model(spec.split(":", 1)[1], weights=weights, model_args=model_args)
        return "timm", net, defaults
    if spec in available():
        _no_model_args(spec, model_args)
        return "registry", create(spec, pretrained=weights is None, weights=weights), {}
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise FragileError(f"{spec} is a model file; --weights goes with a registry name or a Factory spec "
                               "(path/to/file.py:Factory --weights state_dict.pt)")
        _no_model_args(spec, model_args)
        return _from_file(path, trust_pickle)
    match = _FACTORY.match(spec)
    if match and (match["module"].endswith(".py") or _DOTTED.match(match["module"])):
        factory = _factory(match["module"], match["attr"])
        net = _call(factory, spec, model_args)
        if weights is not None:
            load_state_dict(net, weights)
        return "factory", net, {}
    raise FragileError(f"{spec!r} is no model fragile knows: give a registry name ({', '.join(available())}), a "
                       "fragile checkpoint file, torchvision:NAME, timm:NAME, path/to/file.py:Factory or "
                       "package.module:Factory (with --weights state_dict.pt), or a pickled model file with "
                       "--trust-pickle")


def _no_model_args(spec: str, model_args: dict) -> None:
    if model_args:
        raise FragileError(f"--model-arg ({', '.join(sorted(model_args))}) is passed to a factory "
                           f"(file.py:Factory, timm:NAME, torchvision:NAME); {spec!r} is built without arguments")


def _from_file(path: Path, trust_pickle: bool) -> tuple[str, nn.Module, dict]:
    """A fragile checkpoint, or (trusted) a pickled whole model; a bare state_dict is refused with the fix."""
    from fragile.models.checkpoint import FORMAT, load_checkpoint

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _names_code(err):
            raise FragileError(f"{path} is not a loadable model file: {str(err)[:200]}") from None
        if not trust_pickle:
            raise FragileError(PICKLE_REFUSED.format(path=path)) from None
        return "pickle", _unpickle(path), {}
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise FragileError(f"{path} is not a loadable model file: {str(err)[:200]}") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return "checkpoint", load_checkpoint(path), {}
    if isinstance(blob, nn.Module):  # a module of torch's own classes only (no user code was unpickled)
        return "pickle", blob, {}
    if _state_of(blob) is not None:
        raise FragileError(f"{path} holds a state_dict (weights, no architecture): give the architecture as "
                           f"--model path/to/file.py:Factory --weights {path} (or a registry name --weights {path})")
    raise FragileError(f"{path} holds a {type(blob).__name__}, neither a fragile checkpoint nor a model")


def _names_code(err: Exception) -> bool:
    """Whether torch's weights-only unpickler refused a file because it names classes or functions (a
    pickled object), not because the bytes are no pickle at all."""
    return "unsupported global" in str(err).lower()


def _unpickle(path: Path) -> nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise FragileError(f"{path} names code that cannot be imported here ({err}): put the module that "
                           "defines the model class on PYTHONPATH, or use a factory + state_dict") from None
    except Exception as err:  # noqa: BLE001 -- whatever the pickle raises is reported the same way
        raise FragileError(f"{path} could not be unpickled: {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(obj, nn.Module):
        raise FragileError(f"{path} unpickles to a {type(obj).__name__}, not an nn.Module")
    return obj


def _factory(module: str, attr: str):
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise FragileError(f"no Python file {module} (from the model spec {module}:{attr})")
        mod = _import_file(path)
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise FragileError(f"cannot import module {module!r} (from the model spec {module}:{attr}): {err}") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))
        raise FragileError(f"{module} has no callable {attr!r}; it defines: {', '.join(names) or 'nothing callable'}")
    return factory


def _import_file(path: Path):
    """Import a user's Python file as a module (its folder on sys.path while it runs, for sibling imports)."""
    path = path.resolve()
    name = f"fragile_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = mod
    sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(mod)
    except Exception as err:  # noqa: BLE001 -- the user's file failed; say so at the boundary
        del sys.modules[name]
        raise FragileError(f"importing {path} failed: {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(str(path.parent))
    return mod


def _call(factory, spec: str, model_args: dict) -> nn.Module:
    try:
        net = factory(**model_args)
    except TypeError as err:
        import inspect

        try:
            signature = str(inspect.signature(factory))
        except (TypeError, ValueError):
            signature = "(...)"
        raise FragileError(f"{spec}{signature} cannot be called with {model_args}: {err}") from None
    if not isinstance(net, nn.Module):
        raise FragileError(f"{spec} returned a {type(net).__name__}, not an nn.Module")
    return net


# -- state_dicts ------------------------------------------------------------------------------------
def _state_of(blob) -> dict | None:
    """The state_dict inside a loaded file: the dict itself, or under 'state_dict' / 'model_state_dict' /
    'model' (training scripts' wrappers); keys with DataParallel's ``module.`` prefix are stripped."""
    if not isinstance(blob, dict):
        return None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not blob or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in blob.items()):
        return None
    if all(k.startswith("module.") for k in blob):
        blob = {k.removeprefix("module."): v for k, v in blob.items()}
    return blob


def load_state_dict(net: nn.Module, path: str | Path) -> None:
    """Load the state_dict file ``path`` into ``net`` (weights-only unpickling); a mismatch raises
    :class:`FragileError` listing the missing, unexpected and wrongly shaped keys."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _names_code(err):
            raise FragileError(f"{path} is a pickled whole model, not a state_dict: pass it as --model {path} "
                               "--trust-pickle, or save model.state_dict()") from None
        raise FragileError(f"{path} is not a loadable checkpoint: {str(err)[:200]}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise FragileError(f"{path} is not a loadable checkpoint: {str(err)[:200]}") from None
    state = _state_of(blob)
    if state is None:
        raise FragileError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]  # older torch files
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what} ({len(keys)}): {', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches (file vs model)", shapes)) if keys]
        raise FragileError(f"{path} does not match {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(state, strict=False)  # every key checked above


# -- torchvision and timm ---------------------------------------------------------------------------
def _install_hint(extra: str) -> str:
    """The pip command that installs an extra without replacing this torch build."""
    version = torch.__version__.split("+")[0]
    return (f"echo 'torch=={version}' > torch-constraints.txt && pip install -c torch-constraints.txt '{extra}' "
            f"(the constraints file keeps your torch {version}; without it pip may pull another, multi-GB build)")


def _optional(name: str, extra: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise FragileError(f"{name}: models need {name} ({err}); install it with: {_install_hint(extra)}") from None


def torchvision_model(name: str, *, weights: Path | None = None, model_args: dict | None = None) -> tuple[nn.Module, dict]:
    """``torchvision:NAME``: (network, preprocessing of its default weights' transforms). Pretrained weights come
    from torchvision's downloader (internet) unless ``weights`` is a state_dict file."""
    tv = _optional("torchvision", "fragile[vision]")
    model_args = dict(model_args or {})
    defaults: dict[str, Any] = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (224, 224)}
    try:
        default_weights = tv.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        default_weights = None
    if default_weights is not None:
        transforms = default_weights.transforms()
        crop = getattr(transforms, "crop_size", None)
        defaults.update(mean=tuple(transforms.mean), std=tuple(transforms.std))
        if crop:
            defaults["input_size"] = parse_size(list(crop))
        defaults["class_names"] = default_weights.meta.get("categories")
    pretrained = bool(model_args.pop("pretrained", weights is None))
    try:
        net = tv.models.get_model(name, weights=default_weights if pretrained else None, **model_args)
    except (ValueError, KeyError) as err:
        raise FragileError(f"torchvision has no model {name!r}: {err}") from None
    except TypeError as err:
        raise FragileError(f"torchvision:{name} cannot be built with {model_args}: {err}") from None
    except (OSError, RuntimeError) as err:  # the download of pretrained weights
        raise FragileError(f"torchvision:{name}: pretrained weights could not be loaded ({str(err)[:200]}); "
                           "offline, pass --weights state_dict.pt") from None
    if weights is not None:
        load_state_dict(net, weights)
    _drop_names_of_other_heads(net, defaults)
    return net, defaults


def timm_model(name: str, *, weights: Path | None = None, model_args: dict | None = None) -> tuple[nn.Module, dict]:
    """``timm:NAME``: (network, preprocessing of timm's resolved data config: mean, std, input_size). Pretrained
    weights come from timm's hub download unless ``weights`` is given or ``model_args`` has pretrained: false."""
    timm = _optional("timm", "timm")
    model_args = dict(model_args or {})
    pretrained = bool(model_args.pop("pretrained", weights is None))
    try:
        net = timm.create_model(name, pretrained=pretrained, **model_args)
    except RuntimeError as err:
        if "unknown model" in str(err).lower():
            raise FragileError(f"timm has no model {name!r}: {err}") from None
        raise FragileError(f"timm:{name} could not be built: {str(err)[:300]}") from None
    except TypeError as err:
        raise FragileError(f"timm:{name} cannot be built with {model_args}: {err}") from None
    except OSError as err:  # the hub download of pretrained weights
        raise FragileError(f"timm:{name}: pretrained weights could not be loaded ({str(err)[:200]}); offline, pass "
                           "--weights state_dict.pt or --model-arg pretrained=false") from None
    if weights is not None:
        load_state_dict(net, weights)
    data = timm.data
    config = (data.resolve_model_data_config(net) if hasattr(data, "resolve_model_data_config")
              else data.resolve_data_config({}, model=net))
    channels, height, width = config["input_size"]
    defaults: dict[str, Any] = {"mean": tuple(config["mean"]), "std": tuple(config["std"]),
                                "input_size": (int(height), int(width)), "channels": int(channels),
                                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}}
    defaults["class_names"] = _timm_class_names(timm, net)
    _drop_names_of_other_heads(net, defaults)
    return net, defaults


def _timm_class_names(timm, net: nn.Module):
    """ImageNet class names of a timm model trained on an ImageNet subset timm recognises, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(net)
        return tuple(d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()) if subset else None
    except (ImportError, AttributeError, TypeError, ValueError, KeyError, OSError):
        return None


def _drop_names_of_other_heads(net: nn.Module, defaults: dict) -> None:
    """Keep the library's class names only if the head has that many outputs (``num_classes=`` changes it)."""
    names = defaults.get("class_names")
    n = getattr(net, "num_classes", None)
    if names is not None and n is not None and n != len(names):
        defaults["class_names"] = None


# -- wrapping ---------------------------------------------------------------------------------------
def _wrap(net: nn.Module, defaults: dict, prep: dict) -> Preprocessed:
    """``Preprocessed(net)`` mapping raw [0, 1] pixels to ``(lo + (hi - lo) x - mean) / std``."""
    mean = _floats(prep["mean"] if prep["mean"] is not None else defaults.get("mean", (0.0,)), "mean")
    std = _floats(prep["std"] if prep["std"] is not None else defaults.get("std", (1.0,)), "std")
    lo, hi = parse_bounds(prep["bounds"] if prep["bounds"] is not None else (0.0, 1.0))
    channels = prep["channels"] or defaults.get("channels") or _first_conv_channels(net) \
        or (len(mean) if len(mean) > 1 else None) or (len(std) if len(std) > 1 else None) or 3
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise FragileError(f"channels must be a positive integer, got {channels!r}")
    for what, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise FragileError(f"{what} has {len(values)} values for a {channels}-channel input (give 1 or {channels})")
    if any(s <= 0 for s in std):
        raise FragileError(f"std must be positive, got {list(std)}")
    if len(std) < len(mean):
        std = std * len(mean)
    if len(mean) < len(std):
        mean = mean * len(std)
    # lo + (hi - lo) x - mean == (hi - lo) x - (mean - lo): Normalize's scale and a shifted mean
    model = Preprocessed(net, mean=[m - lo for m in mean], std=std, scale=hi - lo)
    model.input_size = defaults.get("input_size")
    model.class_names = None
    model.channels = channels
    model.preprocessing = {"mean": list(mean), "std": list(std), "pixel_range": [lo, hi],
                           **({"library_config": defaults["config"]} if "config" in defaults else {})}
    return model


def _first_conv_channels(net: nn.Module) -> int | None:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def channels_of(model: nn.Module) -> int:
    """The number of input channels ``model`` takes: its :class:`Normalize`'s when that has per-channel statistics,
    else the ``in_channels`` of its first ``nn.Conv2d``, else 3.
    """
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is not None and norm.mean.shape[1] > 1:
        return int(norm.mean.shape[1])
    return _first_conv_channels(model) or 3


def _probe(model: nn.Module, spec: str) -> None:
    """One forward pass on a blank (1, C, H, W) input when the size is known: the model must return (1, K)
    logits, K matching the class names."""
    if model.input_size is None:
        return
    x = torch.zeros(1, model.channels, *model.input_size)
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            out = model.eval()(x.to(p.device, p.dtype) if p is not None else x)
    except Exception as err:  # noqa: BLE001 -- any failure here is a mismatch of spec and options
        raise FragileError(f"{spec} fails on a blank {tuple(x.shape)} input (channels {model.channels}, size "
                           f"{model.input_size}; set --channels / --size): {type(err).__name__}: {str(err)[:300]}") from None
    if not torch.is_tensor(out) or out.dim() != 2:
        raise FragileError(f"{spec} must return (N, classes) logits, returned "
                           f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
    names = model.class_names
    if names is not None and len(names) != out.shape[1]:
        raise FragileError(f"{len(names)} class names for a model with {out.shape[1]} outputs")


# -- option parsing (CLI and YAML) ------------------------------------------------------------------
def _floats(values, what: str) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise FragileError(f"{what} must be a number or a list of numbers, got {values!r}") from None
    if not out:
        raise FragileError(f"{what} must not be empty")
    return out


def parse_bounds(values) -> tuple[float, float]:
    """(lo, hi) with lo < hi: the pixel range the network expects before mean/std."""
    b = _floats(values, "bounds")
    if len(b) != 2 or not b[0] < b[1]:
        raise FragileError(f"bounds must be two numbers LOW HIGH with LOW < HIGH, got {values!r}")
    return b[0], b[1]


def parse_size(values) -> tuple[int, int]:
    """H or (H, W) -> (H, W), positive integers."""
    values = [values] if isinstance(values, int) else list(values)
    if len(values) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise FragileError(f"size must be H or H W (positive integers), got {values!r}")
    return (values[0], values[-1])


def parse_classes(classes) -> tuple[str, ...]:
    """Class names from a list, a file with one name per line, or a comma-separated string."""
    if isinstance(classes, (list, tuple)):
        names = [str(c).strip() for c in classes]
    elif isinstance(classes, (str, Path)):
        text = str(classes)
        path = Path(text)
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        elif "," in text:
            names = [c.strip() for c in text.split(",")]
        else:
            raise FragileError(f"classes {text!r}: no such file, and not a comma-separated list of names")
    else:
        raise FragileError(f"classes must be a list, a file or a comma-separated string, got {classes!r}")
    if not names or any(not n for n in names):
        raise FragileError(f"class names must be non-empty, got {names!r}")
    return tuple(names)


def parse_model_args(items: Sequence[str] | None) -> dict:
    """``['width=16', 'act=relu']`` -> ``{'width': 16, 'act': 'relu'}`` (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise FragileError(f"--model-arg takes KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise FragileError(f"--model-arg {item!r}: the value is not a YAML scalar: {err}") from None
    return out


def check_config(value) -> str | dict:
    """The sweep config's ``model:`` -- a spec string, or a mapping of :data:`CONFIG_KEYS` -- validated
    without loading anything; a mapping with only ``spec`` becomes the string (one hash for both forms)."""
    if isinstance(value, str) and value:
        return value
    if not isinstance(value, dict):
        raise FragileError(f"model must be a spec string or a mapping with keys {', '.join(CONFIG_KEYS)}; got {value!r}")
    unknown = sorted(set(value) - set(CONFIG_KEYS))
    if unknown:
        raise FragileError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in model; "
                           f"valid keys: {', '.join(sorted(CONFIG_KEYS))}")
    if not isinstance(value.get("spec"), str) or not value["spec"]:
        raise FragileError("model: the mapping needs spec: <registry name, file, torchvision:NAME, timm:NAME or "
                           "file.py:Factory>")
    out = {k: v for k, v in value.items() if v is not None}
    checks = {"weights": lambda v: isinstance(v, str), "model_args": lambda v: isinstance(v, dict),
              "trust_pickle": lambda v: isinstance(v, bool),
              "channels": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0}
    for key, ok in checks.items():
        if key in out and not ok(out[key]):
            raise FragileError(f"model.{key} has the wrong type: {out[key]!r}")
    for key, parse in (("mean", lambda v: _floats(v, "model.mean")), ("std", lambda v: _floats(v, "model.std")),
                       ("bounds", parse_bounds), ("size", parse_size)):
        if key in out:
            parse(out[key])
    if "classes" in out and isinstance(out["classes"], list):
        parse_classes(out["classes"])
    return out if set(out) != {"spec"} else out["spec"]


def from_config(value) -> nn.Module:
    """:func:`load` from a sweep config's ``model:`` (string or mapping)."""
    value = check_config(value)
    return load(value) if isinstance(value, str) else load(**value)


def images_for(model: nn.Module, spec: str, resize: str | None = None):
    """The images of ``spec`` at the model's input size and channel count, as a sweep reads them: (x (N, C,
    H, W) in [0, 1], labels or None), class sub-folder labels in the model's class indices where the names
    match; ``resize``: fragile.data's resize policy (None refuses images of another size)."""
    from fragile.data import load_image_set, model_channels
    from fragile.data.images import align_labels

    images = load_image_set(spec, size=getattr(model, "input_size", None), resize=resize,
                            channels=model_channels(model))
    images = align_labels(images, getattr(model, "class_names", None))
    return images.x, images.labels

