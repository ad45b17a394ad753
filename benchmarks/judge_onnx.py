"""The default judge through ONNX Runtime on the CPU, against PyTorch's int8 path: a faster int8 scorer?

Not a dependency of the project: install ``onnxruntime`` and ``onnx`` beside it to run this. The judge is
exported once (TorchScript exporter, dynamic batch and length), then scored as exported (float32), with
ONNX Runtime's BERT graph fusions, and after ONNX Runtime's dynamic int8 quantisation of each, on the same
held-out pairs, batches and order as ``LearnedJudge`` (``LearnedJudge.batches``), two threads.
Each variant's speed is taken in the same process as PyTorch's, so the ratio holds on a busy machine; its
scores are compared with PyTorch's int8 and float32 scores, and its flags at the judge's threshold with
PyTorch int8's.

    pip install onnxruntime onnx
    .venv/bin/python benchmarks/judge_onnx.py [--name NAME]

Writes benchmarks/results/judge_onnx-<machine>[-NAME].json.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.moderation.dataset import split
from vaccine_core.moderation.learned import LearnedJudge, ensure_default_judge, judge_data
from vaccine_core.settings import get_settings

THREADS = 2
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export(judge: LearnedJudge, folder: Path, sample: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The judge as ONNX files: as exported, fused, and each quantised to int8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    model = BertForSequenceClassification.from_pretrained(str(judge.path), attn_implementation="eager").eval()
    files = {"float32": folder / "judge.onnx", "fused-float32": folder / "judge-fused.onnx"}
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"logits": {0: "batch"}}
    torch.onnx.export(
        model,
        tuple(sample[name] for name in INPUTS),
        str(files["float32"]),
        input_names=INPUTS,
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    config = model.config
    fused = optimize_model(
        str(files["float32"]),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
    )
    fused.save_model_to_file(str(files["fused-float32"]))
    for name in ("float32", "fused-float32"):
        quantised = folder / f"{files[name].stem}-int8.onnx"
        # the fused graph's own operators defeat shape inference: their outputs are float32
        options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        quantize_dynamic(str(files[name]), str(quantised), weight_type=QuantType.QInt8, extra_options=options)
        files[name.replace("float32", "int8")] = quantised
    return files


def pairs_per_second(score: Callable[[], np.ndarray], pairs: int, repeats: int) -> tuple[np.ndarray, float]:
    scores = score()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        score()
    return scores, pairs * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="", help="Appended to the result's file name (the machine's).")
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(THREADS)
    _train, _validation, held_out = split(judge_data(get_settings().data_dir))
    pairs = [(p.question, p.answer) for p in held_out[: args.pairs]]
    int8 = LearnedJudge(ensure_default_judge(), quantize=True)
    float32 = LearnedJudge(int8.path, quantize=False)

    def torch_scores(judge: LearnedJudge) -> Callable[[], np.ndarray]:
        return lambda: np.array([verdict.score for verdict in judge.score(pairs)])

    reference, torch_rate = pairs_per_second(torch_scores(int8), len(pairs), args.repeats)
    reference_float32, _ = pairs_per_second(torch_scores(float32), len(pairs), 1)

    batches = list(int8.batches(pairs, return_tensors="np"))  # as the judge scores them

    def onnx_scores(file: Path) -> Callable[[], np.ndarray]:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

        def score() -> np.ndarray:
            logits = np.empty(len(pairs))
            for chunk, encoded in batches:
                feed = {name: encoded[name].astype(np.int64) for name in INPUTS}
                logits[chunk] = session.run(None, feed)[0][:, 0]
            return 1 / (1 + np.exp(-logits))

        return score

    variants = {}
    with tempfile.TemporaryDirectory() as folder:
        _, sample = next(int8.batches(pairs[:4]))
        for name, file in export(int8, Path(folder), sample).items():
            scores, rate = pairs_per_second(onnx_scores(file), len(pairs), args.repeats)
            flags_agree = np.mean((scores >= int8.threshold) == (reference >= int8.threshold))
            variants[name] = {
                "pairs_per_second": round(rate, 1),
                "ratio_to_torch_int8": round(rate / torch_rate, 3),
                "max_score_difference_to_torch_int8": round(float(np.abs(scores - reference).max()), 4),
                "max_score_difference_to_torch_float32": round(
                    float(np.abs(scores - reference_float32).max()), 4
                ),
                "flags_agreeing_with_torch_int8": round(float(flags_agree), 4),
            }
            print(f"{name:14s} {rate:6.1f} pairs/s ({rate / torch_rate:.2f}x torch int8) {variants[name]}")
    info = machine_info()
    result = {
        "benchmark": "judge_onnx",
        **provenance("benchmarks/judge_onnx.py"),
        "machine": info,
        "setup": {
            "pairs": len(pairs),
            "batch_size": int8.batch_size,
            "repeats": args.repeats,
            "threads": THREADS,
            "judge": str(int8.path),
            "threshold": int8.threshold,
            "onnxruntime": onnxruntime.__version__,
        },
        "torch_int8_pairs_per_second": round(torch_rate, 1),
        "variants": variants,
    }
    suffix = f"-{args.name}" if args.name else ""
    out = RESULTS / f"judge_onnx-cpu-{info['cpu_count']}cores{suffix}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
