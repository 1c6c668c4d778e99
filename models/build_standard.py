"""Build standard architectures with random weights for the benchmarks: ResNet-50, MobileNetV2, BERT-base.

These are too big to commit (100 MB, 14 MB, 436 MB), so they are built on demand into a cache folder
(default ``models/.cache/``, ignored by git)::

    python models/build_standard.py                      # all three; models that exist are skipped
    python models/build_standard.py --only bert_base --force
    python models/build_standard.py --out /tmp/standard  # another cache folder

Each model is written by hand in torch (torchvision does not run beside torch 2.13 here), seeded, put in
eval mode and exported un-optimized, as a user's raw export would be::

    torch.onnx.export(..., dynamo=False, do_constant_folding=False, opset_version=17)

so BatchNormalization stays separate from Conv, ReLU6 is a Clip, and BERT's shape arithmetic
(Shape/Gather/Unsqueeze/Concat before each Reshape) is left in the graph.

- ``resnet50.onnx``: ResNet-50 v1.5 (Bottleneck blocks [3, 4, 6, 3], the stride on the 3x3 conv, as in
  torchvision); input ``input`` float32 [batch, 3, 224, 224], output ``logits`` [batch, 1000].
- ``mobilenetv2.onnx``: MobileNetV2, width 1.0 (inverted residuals, ReLU6, as in torchvision); input
  ``input`` float32 [batch, 3, 224, 224], output ``logits`` [batch, 1000].
- ``bert_base.onnx``: BERT-base encoder (12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 30522, 512
  positions, pooler); inputs ``input_ids`` and ``attention_mask`` int64 [batch, sequence], outputs
  ``last_hidden_state`` [batch, sequence, 768] and ``pooler_output`` [batch, 768].

BERT is written like Hugging Face's ``BertModel`` so the graph resembles a HF export: every ``nn.Linear`` on a
3-D tensor becomes MatMul + Add, attention is spelled out (MatMul, Div by sqrt(64), Add of the extended
mask ``(1 - mask) * float32.min``, Softmax, MatMul), GELU is the erf form (Div, Erf, Add, Mul, Mul),
``nn.LayerNorm`` exports as ``LayerNormalization`` (opset 17), and position / token-type ids are buffers
sliced to the sequence length. The benchmark feeds batch 1, sequence 128; both axes are dynamic in the file.

Weights: BERT uses its own initialisation (normal std 0.02), with small random biases and LayerNorm
parameters (left at zeros and ones they would all be equal, and the exporter would deduplicate them into
Identity nodes that a trained model's export does not have). The CNNs use torchvision's initialisation
(Kaiming normal convs), then BatchNorm is given non-trivial, well-scaled parameters: its running
statistics are measured on a few random batches (train-mode forward with cumulative averaging) and its
scale and shift are drawn at random, so that a BatchNorm fused into a Conv is exercised numerically and
activations stay finite through the whole net. Everything is seeded; rebuilding on the same machine gives
the same weights.

Each file is verified after export: ``onnx.checker`` (full check), and onnxruntime's outputs against
torch's on random inputs (relative to the output scale, within 1e-3). Files are written atomically, so a
file that exists is complete; ``--force`` rebuilds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache"
OPSET = 17
IMAGE_SIZE = 224
BERT_SEQUENCE = 128


# ----------------------------------------------------------------------------------------------- ResNet-50


def _resnet50():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """1x1 reduce, 3x3 (carries the stride, ResNet v1.5), 1x1 expand x4; residual Add, then ReLU."""

        expansion = 4

        def __init__(self, in_ch: int, width: int, stride: int) -> None:
            super().__init__()
            out_ch = width * self.expansion
            self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out_ch)
            self.relu = nn.ReLU(inplace=True)
            self.downsample: nn.Module | None = None
            if stride != 1 or in_ch != out_ch:
                self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out_ch))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            in_ch = 64
            stages = []
            for index, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
                stage = []
                for block in range(blocks):
                    stride = 2 if index > 0 and block == 0 else 1
                    stage.append(Bottleneck(in_ch, width, stride))
                    in_ch = width * Bottleneck.expansion
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(in_ch, num_classes)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet50()


# --------------------------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (width multiplier 1.0 keeps the paper's numbers)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _mobilenetv2(width: float = 1.0):
    import torch
    from torch import nn

    def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(out_ch), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        """[1x1 expand Conv+BN+ReLU6 when t > 1], 3x3 depthwise Conv+BN+ReLU6, 1x1 linear projection Conv+BN."""

        def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = in_ch * expand
            self.use_residual = stride == 1 and in_ch == out_ch
            layers = [conv_bn_relu6(in_ch, hidden, 1, 1)] if expand != 1 else []
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, channels c, repeats n, first stride s), from the paper
        config = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))

        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            in_ch = _make_divisible(32 * width)
            last_ch = _make_divisible(1280 * max(1.0, width))
            features = [conv_bn_relu6(3, in_ch, 3, 2)]
            for t, c, n, s in self.config:
                out_ch = _make_divisible(c * width)
                for i in range(n):
                    features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                    in_ch = out_ch
            features.append(conv_bn_relu6(in_ch, last_ch, 1, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_ch, num_classes))
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out")
                elif isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0, 0.01)
                    nn.init.zeros_(module.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


# ----------------------------------------------------------------------------------------------- BERT-base


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


def _bert_base(config: BertConfig = BertConfig()):
    import torch
    from torch import nn

    class Embeddings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden)
            self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden)
            self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
            self.dropout = nn.Dropout(0.1)
            self.register_buffer("position_ids", torch.arange(config.max_positions).expand((1, -1)),
                                 persistent=False)
            self.register_buffer("token_type_ids", torch.zeros((1, config.max_positions), dtype=torch.long),
                                 persistent=False)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            batch, sequence = input_ids.size()
            position_ids = self.position_ids[:, :sequence]
            token_type_ids = self.token_type_ids[:, :sequence].expand(batch, sequence)
            x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
                 + self.position_embeddings(position_ids))
            return self.dropout(self.LayerNorm(x))

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = config.heads
            self.head_size = config.hidden // config.heads
            self.query = nn.Linear(config.hidden, config.hidden)
            self.key = nn.Linear(config.hidden, config.hidden)
            self.value = nn.Linear(config.hidden, config.hidden)
            self.dropout = nn.Dropout(0.1)

        def split_heads(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.size()[:-1] + (self.heads, self.head_size)).permute(0, 2, 1, 3)

        def forward(self, hidden: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
            query = self.split_heads(self.query(hidden))
            key = self.split_heads(self.key(hidden))
            value = self.split_heads(self.value(hidden))
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
            probs = self.dropout(nn.functional.softmax(scores + extended_mask, dim=-1))
            context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
            return context.view(context.size()[:-2] + (config.hidden,))

    class DenseAddNorm(nn.Module):
        """BertSelfOutput / BertOutput: Linear, dropout, LayerNorm(x + residual)."""

        def __init__(self, in_features: int) -> None:
            super().__init__()
            self.dense = nn.Linear(in_features, config.hidden)
            self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
            self.dropout = nn.Dropout(0.1)

        def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = SelfAttention()
            self.attention_output = DenseAddNorm(config.hidden)
            self.intermediate = nn.Linear(config.hidden, config.intermediate)
            self.activation = nn.GELU()  # exact (erf) GELU, as BERT's "gelu"
            self.output = DenseAddNorm(config.intermediate)

        def forward(self, hidden: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
            attention = self.attention_output(self.attention(hidden, extended_mask), hidden)
            return self.output(self.activation(self.intermediate(attention)), attention)

    class BertModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = Embeddings()
            self.layers = nn.ModuleList(Layer() for _ in range(config.layers))
            self.pooler = nn.Linear(config.hidden, config.hidden)
            self.pooler_activation = nn.Tanh()
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                # small random biases and LayerNorm affine parameters, as after training: with BERT's
                # zero/one initialisation they would all be equal and the exporter would deduplicate
                # them into Identity nodes, which a trained model's export does not have
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.bias, mean=0.0, std=0.02)
                if isinstance(module, nn.LayerNorm):
                    nn.init.normal_(module.weight, mean=1.0, std=0.02)
                    nn.init.normal_(module.bias, mean=0.0, std=0.02)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            extended_mask = attention_mask[:, None, None, :].to(torch.float32)
            extended_mask = (1.0 - extended_mask) * torch.finfo(torch.float32).min
            hidden = self.embeddings(input_ids)
            for layer in self.layers:
                hidden = layer(hidden, extended_mask)
            pooled = self.pooler_activation(self.pooler(hidden[:, 0]))
            return hidden, pooled

    return BertModel()


# ------------------------------------------------------------------------------------------------ the specs


@dataclass(frozen=True)
class StandardModel:
    name: str
    description: str
    seed: int
    factory: Callable[[], object]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    example_inputs: Callable[[np.random.Generator], tuple[np.ndarray, ...]]
    calibrate_batchnorm: bool


def _image(rng: np.random.Generator, batch: int = 1) -> tuple[np.ndarray, ...]:
    return (rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32),)


def _tokens(rng: np.random.Generator, batch: int = 1) -> tuple[np.ndarray, ...]:
    ids = rng.integers(0, BertConfig.vocab_size, size=(batch, BERT_SEQUENCE), dtype=np.int64)
    mask = np.ones((batch, BERT_SEQUENCE), dtype=np.int64)
    mask[:, BERT_SEQUENCE - 16:] = 0  # some padding, so the mask path does something
    return ids, mask


_IMAGE_AXES = {"input": {0: "batch"}, "logits": {0: "batch"}}
SPECS: dict[str, StandardModel] = {
    spec.name: spec
    for spec in (
        StandardModel("resnet50", "ResNet-50 v1.5, Bottleneck [3, 4, 6, 3], 224x224, 1000 classes", 50,
                      _resnet50, ("input",), ("logits",), _IMAGE_AXES, _image, True),
        StandardModel("mobilenetv2", "MobileNetV2 width 1.0, 224x224, 1000 classes", 2,
                      _mobilenetv2, ("input",), ("logits",), _IMAGE_AXES, _image, True),
        StandardModel("bert_base", "BERT-base encoder, 12 x (768 hidden, 12 heads, 3072 FFN), seq 128", 110,
                      _bert_base, ("input_ids", "attention_mask"), ("last_hidden_state", "pooler_output"),
                      {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                       "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}},
                      _tokens, False),
    )
}


# ----------------------------------------------------------------------------------------------- the build


def _randomize_batchnorm(model, rng_seed: int) -> None:
    """Give every BatchNorm measured running statistics and a random scale/shift (see the docstring)."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(rng_seed)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator))
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
            norm.momentum = 0.1
    model.eval()


def build_torch_model(spec: StandardModel):
    import torch

    torch.manual_seed(spec.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = spec.factory()
    if spec.calibrate_batchnorm:
        _randomize_batchnorm(model, spec.seed)
    model.eval()
    return model


def export(spec: StandardModel, model, path: Path) -> None:
    """Export to a temporary file next to ``path``, then rename: a file at ``path`` is always complete."""
    import torch

    inputs = tuple(torch.from_numpy(a) for a in spec.example_inputs(np.random.default_rng(0)))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in favour of dynamo; it is the one we want here
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, temporary, dynamo=False, opset_version=OPSET,
                              input_names=list(spec.input_names), output_names=list(spec.output_names),
                              dynamic_axes=spec.dynamic_axes, do_constant_folding=False, export_params=True,
                              training=torch.onnx.TrainingMode.EVAL)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def verify(spec: StandardModel, model, path: Path) -> dict:
    """Checker (full) and onnxruntime outputs against torch's, relative to each output's scale."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(str(path), full_check=True)
    arrays = spec.example_inputs(np.random.default_rng(1))
    with torch.no_grad():
        expected = model(*(torch.from_numpy(a) for a in arrays))
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    actual = session.run(list(spec.output_names), dict(zip(spec.input_names, arrays, strict=True)))
    errors = {}
    for name, want, got in zip(spec.output_names, expected, actual, strict=True):
        want = want.numpy()
        if not np.isfinite(got).all():
            raise SystemExit(f"{path.name}: output {name} is not finite")
        scale = max(float(np.abs(want).max()), 1e-12)
        errors[name] = float(np.abs(got - want).max()) / scale
        if errors[name] > 1e-3:
            raise SystemExit(f"{path.name}: onnxruntime and torch differ on {name}: {errors[name]:.3g} of the scale")
    proto = onnx.load(str(path), load_external_data=False)
    return {"nodes": len(proto.graph.node), "ops": Counter(n.op_type for n in proto.graph.node),
            "relative_error": errors}


def build(spec: StandardModel, out_dir: Path) -> Path:
    path = out_dir / f"{spec.name}.onnx"
    start = time.perf_counter()
    model = build_torch_model(spec)
    parameters = sum(p.numel() for p in model.parameters())
    export(spec, model, path)
    info = verify(spec, model, path)
    ops = ", ".join(f"{op} {count}" for op, count in info["ops"].most_common(8))
    errors = ", ".join(f"{name} {error:.1e}" for name, error in info["relative_error"].items())
    print(f"  {path.name}: {parameters / 1e6:.1f} M parameters, {path.stat().st_size / 2**20:.1f} MiB, "
          f"{info['nodes']} nodes ({ops}); ORT vs torch (of scale): {errors}; "
          f"{time.perf_counter() - start:.1f} s")
    return path


def ensure(names: list[str] | None = None, out_dir: Path = DEFAULT_CACHE, force: bool = False) -> dict[str, Path]:
    """Build the named models (all by default) that are missing (or all with ``force``); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(SPECS):
        path = out_dir / f"{name}.onnx"
        if path.exists() and not force:
            print(f"  {path.name}: exists, skipped (--force rebuilds)")
        else:
            print(f"building {name}: {SPECS[name].description}")
            build(SPECS[name], out_dir)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SPECS), help="build only these models")
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ensure(args.only, args.out, args.force)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
