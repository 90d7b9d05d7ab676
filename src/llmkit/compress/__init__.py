"""The compress stage: merge a LoRA adapter into its base, export a GGUF (f16, q8_0, q4_0, q4_k, q4_gptq) that
llama.cpp loads or a weight-only int8/int4 HF folder that the transformers engine loads, and measure the export
against its float reference (f16 GGUF, or bf16 in transformers).

    r = compress(CompressConfig(quantize="q4_k"), "runs/x/train", Path("runs/x/compress"), dataset=Path("runs/x/data"))
    print(format_table([r["metrics"]]))

The output is an artifact folder holding exactly one `.gguf` (so `llmkit chat FOLDER` finds it) or the int8/int4
HF folder's files (`llmkit chat FOLDER --engine transformers`), plus `report.md` and `manifest.json` (inputs: the
base model, the adapter, the dataset; metrics: the quality and size report). It is built under a temporary name
and renamed into place: a killed export leaves nothing under `out`, and running again builds it from the start.
merge.py checks and merges, gguf.py writes, quantize.py and gptq.py quantize (GGUF), hf_quant.py quantizes with
optimum-quanto and measures in transformers, report.py measures. lora_gguf.py writes a LoRA adapter, unmerged, as llama.cpp's adapter
GGUF (for serving many adapters on one base).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from llmkit import artifacts
from llmkit.config import CompressConfig
from llmkit.errors import ConfigError, UnsupportedModel
from llmkit.models import REGISTRY, ModelRef, resolve_model

__all__ = ["compress", "summary"]


def _sources(model: str, adapter: str | None) -> tuple[ModelRef, Path | None, str | None]:
    """(base model, adapter folder or None, the base name the adapter records) for what the user gave."""
    ref = resolve_model(model)
    if adapter is not None:
        aref = resolve_model(adapter)
        if aref.kind != "adapter":
            raise UnsupportedModel(f"--adapter {adapter}: not a PEFT adapter folder (it has no adapter_config.json)")
        if ref.kind == "adapter":
            raise UnsupportedModel(f"{model} is itself an adapter; give its base as MODEL, or drop --adapter")
        return ref, aref.path, aref.base
    if ref.kind == "adapter":
        assert ref.base is not None
        return resolve_model(ref.base), ref.path, ref.base
    return ref, None, None


def _portable(spec: str | None) -> str | None:
    """A model spec as the config records it: a registry name or hub id as given, a local path by its name."""
    return Path(spec).name if spec is not None and Path(spec).exists() else spec


def _stem(model: str, name: str | None) -> str:
    raw = name or (model if model in REGISTRY else Path(model).name.removesuffix(".gguf"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.") or "model"


def compress(cfg: CompressConfig, model: str, out: Path, *, adapter: str | None = None, dataset: Path | None = None,
             name: str | None = None, force: bool = False, threads: int | None = None,
             progress: bool = True) -> dict:
    """Export `model` (registry name, HF folder, GGUF, train artifact or PEFT adapter; plus `adapter` to merge)
    as `cfg.quantize` into the artifact folder `out`, with a quality and size report against its float reference:
    a GGUF (f16, q8_0, q4_0, q4_k, q4_gptq; against f16) or a transformers int8/int4 folder (against bf16).

    dataset: a dataset artifact (or .jsonl) whose val rows the perplexity is measured on; None: a fixed text.
    Returns {"status": "ran" | "skipped", "out", "model" (what to load: the .gguf or the folder), "gguf" (or
    None), "metrics"}.
    """
    from llmkit.compress.gguf import gguf_origin, read_config
    from llmkit.compress.merge import check_recorded_base, check_shapes, merge, refuse_pickle, to_safetensors
    from llmkit.compress.report import format_table
    from llmkit.engines import default_threads
    from llmkit.models import hf_folder

    out = Path(out).resolve()
    base, adapter_dir, recorded = _sources(model, adapter)
    hf = cfg.quantize in ("int8", "int4")  # a transformers folder (hf_quant.py); the rest are GGUF types
    problems = []
    if cfg.quantize == "q4_gptq" and not (dataset is not None and (Path(dataset) / "train.jsonl").is_file()):
        problems.append("compress.quantize: q4_gptq calibrates GPTQ on the dataset's train rows; give a dataset "
                        "artifact folder with a train.jsonl (--data), or choose q4_0 / q4_k")
    if adapter_dir is not None and not cfg.merge:
        problems.append("compress.merge: false, but the model is a LoRA adapter; " + (
            f"the {cfg.quantize} export quantizes one set of weights, so the adapter must be merged into its base "
            "first (merge: true); to serve it unmerged, use the float adapter with --engine transformers" if hf else
            "llama.cpp runs one set of weights, so the GGUF export needs the adapter merged into its base "
            "(merge: true)"))
    if hf and cfg.imatrix:
        problems.append(f"compress.imatrix: the importance matrix is llama.cpp's, for the GGUF 4-bit types "
                        f"(q4_0, q4_k); {cfg.quantize} is a transformers export (drop --imatrix)")
    if problems:
        raise ConfigError(problems)
    if base.kind == "quantized":
        raise UnsupportedModel(f"{base.path} is already an int8/int4 export (optimum-quanto); compress the float "
                               "model it was made from")
    # everything that can be checked cheaply is checked before any slow work
    if base.kind == "hf":
        read_config(base.path)
        refuse_pickle(base.path, "the model", cfg.allow_pickle)
    if adapter_dir is not None:
        refuse_pickle(adapter_dir, "the adapter", cfg.allow_pickle)
        check_recorded_base(adapter_dir, base, recorded or "?")
    stem = _stem(model if adapter is None else adapter, name)
    inputs = {"model": artifacts.input_ref(base.path)}
    if adapter_dir is not None:
        inputs["adapter"] = artifacts.input_ref(adapter_dir)
    if dataset is not None:
        inputs["data"] = artifacts.input_ref(dataset)
    # a local model or adapter is identified by its input hash above; its absolute path in the config would make
    # the fingerprint change with the folder the run lives in (two copies of one run must fingerprint the same)
    config = {"compress": cfg.model_dump(), "model": _portable(model), "adapter": _portable(adapter), "name": stem}
    fp = artifacts.fingerprint("model", config, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        gguf = m["outputs"].get("gguf")
        return {"status": "skipped", "out": str(out), "model": gguf or str(out), "gguf": gguf, "metrics": m["metrics"]}

    threads = threads or default_threads()
    with artifacts.build("model", out, config, inputs) as b:
        work = b.tmp / "work"  # merged weights and the float reference; deleted before the folder is published
        base_hf = hf_folder(base, progress=progress)
        read_config(base_hf)
        src = base_hf
        if refuse_pickle(base_hf, "the model", cfg.allow_pickle):
            src = to_safetensors(base_hf, work / "model")
        if adapter_dir is not None:
            check_shapes(adapter_dir, base, src, recorded or "?")
            src = merge(adapter_dir, src, work / "merged", allow_pickle=cfg.allow_pickle)
        if hf:
            report, outputs = _export_hf(cfg, src, work, b.tmp, stem, dataset, threads, progress)
            outputs["folder"] = str(out)
        else:
            tokenizer_gguf = base.path if base.kind == "gguf" else gguf_origin(base_hf)
            report, outputs = _export_gguf(cfg, src, work, b.tmp, stem, tokenizer_gguf, dataset, threads, progress)
            outputs["gguf"] = str(out / outputs["gguf"])
        (b.tmp / "report.md").write_text(f"# {report['file']}\n\n```\n{format_table([report])}\n```\n")
        shutil.rmtree(work, ignore_errors=True)
        b.outputs = {**outputs, "quantize": cfg.quantize, "base": base.name,
                     "adapter": str(adapter_dir) if adapter_dir else None}
        b.metrics = report
    gguf = outputs.get("gguf")
    return {"status": "ran", "out": str(out), "model": gguf or str(out), "gguf": gguf, "metrics": report}


def _export_gguf(cfg: CompressConfig, src: Path, work: Path, tmp: Path, stem: str, tokenizer_gguf: Path | None,
                 dataset: Path | None, threads: int, progress: bool) -> tuple[dict, dict]:
    """Write the GGUF into `tmp` and measure it against its f16 export; (report, outputs)."""
    from llmkit.compress.gguf import write_f16
    from llmkit.compress.gptq import GPTQ_TOKEN_EMBD, GPTQ_TYPE, gptq_4bit, write_gptq
    from llmkit.compress.quantize import importance, quantize, tensor_types
    from llmkit.compress.report import calibration_texts, measure

    export = tmp / f"{stem}.{cfg.quantize}.gguf"
    # f16 first: it is the export itself for f16, else the quantizer's input and the report's reference
    f16 = export if cfg.quantize == "f16" else work / f"{stem}.f16.gguf"
    info = write_f16(src, f16, name=stem, tokenizer_gguf=tokenizer_gguf, progress=progress)
    imatrix, calibration = None, "none"
    if cfg.quantize in ("q4_0", "q4_k") and cfg.imatrix and dataset is not None:
        texts = calibration_texts(dataset, src, cfg.imatrix_rows)
        imatrix = importance(src, texts, progress=progress) if texts else None
        calibration = f"importance matrix from {len(texts)} train rows" if texts else "none (no train rows)"
    if cfg.quantize == "q4_gptq":
        assert dataset is not None  # checked before any slow work
        texts = calibration_texts(dataset, src, cfg.imatrix_rows)
        t0 = time.perf_counter()
        blocks = gptq_4bit(src, texts, GPTQ_TYPE, progress=progress)
        # the output matmul (the tied embedding, or output.weight) is llama.cpp's to round: weighted by the
        # importance of its inputs on the same rows (example adapter: +5.26% -> +5.01% val perplexity)
        out_im = {k: v for k, v in importance(src, texts, progress=progress).items()
                  if k in ("token_embd.weight", "output.weight")}
        info["seconds"] += time.perf_counter() - t0
        info["seconds"] += write_gptq(f16, export, blocks, GPTQ_TYPE, token_embd=GPTQ_TOKEN_EMBD, imatrix=out_im,
                                      threads=threads)["seconds"]
        calibration = f"GPTQ from {len(texts)} train rows; output matrix weighted by their importance matrix"
    elif cfg.quantize != "f16":
        info["seconds"] += quantize(f16, export, cfg.quantize, threads=threads, imatrix=imatrix)["seconds"]
    report = measure(f16, export, src, dataset, rows=cfg.eval_rows, prompts=cfg.prompts,
                     gen_tokens=cfg.gen_tokens, threads=threads, progress=progress)
    report["tensor_types"] = tensor_types(export)
    report["export_seconds"] = round(info["seconds"], 2)
    report["tokenizer"] = info["tokenizer"]
    report["calibration"] = calibration
    return report, {"format": "gguf", "gguf": export.name}


def _export_hf(cfg: CompressConfig, src: Path, work: Path, tmp: Path, stem: str, dataset: Path | None,
               threads: int, progress: bool) -> tuple[dict, dict]:
    """Write the int8/int4 HF folder's files into `tmp` and measure them against bf16; (report, outputs)."""
    from llmkit.compress import hf_quant

    info = hf_quant.export(src, work / "reference", tmp, cfg.quantize)
    report = hf_quant.measure(work / "reference", tmp, src, dataset, name=f"{stem}.{cfg.quantize}",
                              rows=cfg.eval_rows, prompts=cfg.prompts, gen_tokens=cfg.gen_tokens, threads=threads,
                              progress=progress)
    report["export_seconds"] = info.pop("seconds")
    report.update(info)  # method, library, library_version, qtype, quantized_layers, activations
    return report, {"format": "transformers", **{k: info[k] for k in ("method", "library", "library_version")}}


def summary(metrics: dict) -> str:
    """The one-line result the CLI and `llmkit run` print."""
    ref = metrics.get("reference", "f16").split()[0]
    return (f"{metrics['file']}: {metrics['size_mb']:.1f} MB ({metrics['size_vs_f16']:.0%} of {ref}), perplexity "
            f"{metrics['ppl_f16']:.3f} → {metrics['ppl']:.3f} ({metrics['ppl_increase_pct']:+.2f}%), greedy "
            f"{metrics['greedy_same']}/{metrics['greedy_prompts']} same, {metrics['decode_tok_s'] or 0:.0f} tok/s")
