"""The built-in ``tiny-lm`` model type: a character-level transformer language model.

Data: ``text:FILE``, a UTF-8 text (example: ``examples/tiny-lm/genesis-exodus.txt``,
Genesis and Exodus of the King James Version, public domain; where it came from:
``examples/tiny-lm/README.md``). The text is cut into contiguous parts, in order: train,
validation (``data.validation_size`` of the characters, none when 0) and test
(``data.test_size``), as usual for language models: no shuffling of characters across a
cut (sizes: ``dcsched.training.splits``). The vocabulary is every character of the file,
sorted (the label space, like a classifier's classes); it is the model's ``classes`` and
is saved with it, so ``load`` + ``predict`` need nothing else. The unigram counts are of
the training part only. ``Dataset.x_*`` hold character indices and ``y_*`` the next
character's index.

Network: character and position embeddings of width ``width``, ``layers`` pre-norm
transformer blocks (causal self-attention with ``heads`` heads, a 4x MLP), a final
LayerNorm and the character logits; CrossEntropy, the train section's optimizer and lr.
An epoch is ``steps_per_epoch`` optimizer steps, each on ``train.batch_size`` windows of
``context`` characters drawn at random from the training part (one pass over a text of a
few hundred KB would take minutes on a CPU; the number of steps says the work done).

Metrics, on the validation part (the test part when there is none), each position
predicted from up to ``context`` characters before it (non-overlapping windows):
``perplexity`` (the objective, minimised), ``cross_entropy`` (nats per character),
``accuracy`` (next character top-1) and ``unigram_perplexity``: the perplexity of the
baseline that predicts every character by its frequency in the training part (add-one
smoothed over the vocabulary). A model that learned anything beats it. Both print in
every epoch's report and the result.

``predict`` generates text: one input is ``{"prompt": str, "max_new_chars": int,
"temperature": float, "seed": int}`` (only ``prompt`` required; ``temperature`` 0 is
greedy); one output is ``{"prompt", "completion"}``. Sampling is seeded per input, so the
same input gives the same completion. Deterministic for a seed on CPU; a checkpoint after
every epoch holds weights, optimizer, RNG states and epoch. One worker.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, model_validator

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins import torch_checkpoint
from dcsched.plugins.api import (
    DataError,
    Dataset,
    DatasetInfo,
    EpochCallback,
    EpochReport,
    FloatArray,
    MetricSet,
    ModelPlugin,
    Resources,
    StrictModel,
    TrainedModel,
)
from dcsched.plugins.saved import META_FILE, read_meta
from dcsched.rundir import write_text_atomically

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
VOCAB_FILE = "vocabulary.json"
MAX_TEXT_BYTES = 64 << 20
"""Largest text file taken (64 MiB)."""
SNIFF_BYTES = 1 << 16
"""How much of the file ``check_data`` reads at submit to see it is UTF-8 text."""
MAX_NEW_CHARS = 2000
METRIC_NAMES = ("perplexity", "cross_entropy", "accuracy", "unigram_perplexity")


class TinyLMParams(StrictModel):
    """``model.params`` of the tiny-lm plugin."""

    context: int = Field(64, ge=2, le=1024, description="Characters the model sees at once.")
    width: int = Field(64, ge=8, le=1024, description="Embedding width (d_model).")
    heads: int = Field(4, ge=1, le=32, description="Attention heads; must divide width.")
    layers: int = Field(2, ge=1, le=12, description="Transformer blocks.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the blocks.")
    steps_per_epoch: int = Field(
        100, ge=1, le=100_000, description="Optimizer steps (batches of windows) per epoch."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyLMParams:
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        return self


class TinyLMPlugin(ModelPlugin):
    api_version = 1
    name = "tiny-lm"
    description = "Character-level transformer language model (PyTorch) on a UTF-8 text file."
    params_model = TinyLMParams
    data_sources = ("text",)
    metrics = MappingProxyType(
        {
            "binary": MetricSet(METRIC_NAMES, "perplexity", "minimize"),
            "multiclass": MetricSet(METRIC_NAMES, "perplexity", "minimize"),
        }
    )
    gpu = True
    uses_torch = True
    default_resources = Resources(cpus=1, gpus=0, memory="1GiB")

    def search_space(self) -> dict[str, Any]:
        return {
            "width": {"type": "categorical", "choices": [32, 64, 128]},
            "layers": {"type": "int", "low": 1, "high": 4},
            "context": {"type": "categorical", "choices": [32, 64, 128]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        }

    def check_data(self, data: DataSpec) -> None:
        from dcsched.core.spec import SpecError

        if data.scheme not in self.data_sources:
            raise SpecError(
                [
                    f"data.source: model type 'tiny-lm' does not take {data.scheme} data; "
                    "it takes: text (a UTF-8 text file, text:FILE)"
                ]
            )
        path = Path(data.location)
        where = "data.source: text file"
        if not path.is_file():
            raise SpecError([f"{where} does not exist or is not a file"])
        size = path.stat().st_size
        if size == 0:
            raise SpecError(
                [f"{where} is empty; give a UTF-8 text of at least a few thousand characters"]
            )
        if size > MAX_TEXT_BYTES:
            raise SpecError([f"{where} has {size} bytes; tiny-lm takes at most {MAX_TEXT_BYTES}"])
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        _check_utf8(head, final=len(head) == size, where=where)

    def load_data(self, data: DataSpec) -> Dataset:
        from dcsched.training.splits import contiguous_parts

        self.check_data(data)
        raw = Path(data.location).read_bytes()
        _check_utf8(raw, final=True, where="data.source: text file")
        text = raw.decode("utf-8")
        if not text.strip():
            raise DataError(["data.source: text file holds only white space; nothing to learn"])
        vocabulary = sorted(set(text))
        if len(vocabulary) < 3:
            raise DataError(
                [
                    f"data.source: text file uses only {len(vocabulary)} distinct characters; "
                    "tiny-lm needs at least 3"
                ]
            )
        index = {char: i for i, char in enumerate(vocabulary)}
        ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
        train_part, validation_part, test_part = contiguous_parts(len(ids), data)
        train, validation, test = ids[train_part], ids[validation_part], ids[test_part]
        parts = [train, test, *([validation] if data.has_validation else [])]
        if min(len(part) for part in parts) < 3:
            raise DataError(
                [
                    f"data.source: the text has {len(ids)} characters; with test_size "
                    f"{data.test_size} and validation_size {data.validation_size} a part "
                    "would hold fewer than 3. Give a longer text"
                ]
            )
        counts = np.bincount(train, minlength=len(vocabulary))
        info = DatasetInfo(
            task="binary" if len(vocabulary) == 2 else "multiclass",
            n_features=1,
            classes=tuple(vocabulary),
            feature_names=("previous characters",),
        )
        return Dataset(
            x_train=train[:-1],
            y_train=train[1:],
            x_test=test[:-1],
            y_test=test[1:],
            x_val=validation[:-1] if data.has_validation else None,
            y_val=validation[1:] if data.has_validation else None,
            info=info,
            preprocessing={"vocabulary": vocabulary, "train_counts": counts.tolist()},
        )

    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> TinyLMModel:
        return TinyLMModel(TinyLMParams.model_validate(params.model_dump()), info, device)

    def load(self, directory: Path, device: str) -> TinyLMModel:
        directory = Path(directory)
        meta = read_meta(
            directory, self.name, FORMAT_VERSION, [torch_checkpoint.WEIGHTS_FILE, VOCAB_FILE]
        )
        model = TinyLMModel(
            TinyLMParams.model_validate(meta["params"]), DatasetInfo.from_json(meta["info"]), device
        )
        model._preprocessing = json.loads((directory / VOCAB_FILE).read_text())
        if model._preprocessing.get("vocabulary") != list(model.info.classes):
            raise ValueError(f"{directory}: the vocabulary does not match the model")
        torch_checkpoint.load_weights(model._net, directory, device)
        return model


class TinyLMModel(TrainedModel):
    def __init__(self, params: TinyLMParams, info: DatasetInfo, device: str):
        self._params, self._info, self._device = params, info, device
        self._net = _build(params, info.n_classes, device)
        self._preprocessing: dict[str, Any] = {
            "vocabulary": list(info.classes),
            "train_counts": [1] * info.n_classes,
        }

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def fit(
        self,
        data: Dataset,
        train: TrainSpec,
        seed: int,
        on_epoch: EpochCallback,
        checkpoint_dir: Path | None,
    ) -> None:
        import torch
        from torch import nn

        from dcsched.plugins.mlp import _optimizer

        self._preprocessing = dict(data.preprocessing)
        # The training stream: x_train plus its last next character.
        stream = np.concatenate([data.x_train, data.y_train[-1:]]).astype(np.int64)
        context = min(self._params.context, len(stream) - 1)
        if context < 1:
            raise ValueError("cannot fit on a training text of fewer than 2 characters")
        device = torch.device(self._device)
        with torch.random.fork_rng(devices=[]):
            generator = torch.Generator(device="cpu")
            optimizer = _optimizer(train, self._net.parameters())
            stamp = torch_checkpoint.stamp(
                FORMAT_VERSION, self._params, self._info, len(stream), seed, train
            )
            path = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_FILE
            start = 0
            if path is not None and path.exists():
                state = torch_checkpoint.restore(
                    path, stamp, self._device, self._net, optimizer, generator
                )
                start = int(state["epoch"])
            else:
                torch.manual_seed(seed)
                generator.manual_seed(seed)
                _reset(self._net)
            tokens = torch.as_tensor(stream, device=device)
            offsets = torch.arange(context + 1, device=device)
            loss_fn = nn.CrossEntropyLoss()
            steps = self._params.steps_per_epoch
            for epoch in range(start + 1, train.epochs + 1):
                began = time.perf_counter()
                self._net.train()
                total = 0.0
                for _ in range(steps):
                    starts = torch.randint(
                        0, len(stream) - context, (train.batch_size,), generator=generator
                    ).to(device)
                    windows = tokens[starts[:, None] + offsets]
                    optimizer.zero_grad(set_to_none=True)
                    logits = self._net(windows[:, :-1])
                    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                seconds = time.perf_counter() - began
                mean_loss = total / steps
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch} (loss {mean_loss}); "
                        "try a smaller train.lr"
                    )
                if path is not None:
                    torch_checkpoint.save(path, stamp, epoch, self._net, optimizer, generator)
                chars = steps * train.batch_size * context
                on_epoch(
                    EpochReport(
                        epoch=epoch,
                        loss=mean_loss,
                        samples_per_s=chars / seconds if seconds > 0 else float("inf"),
                        seconds=seconds,
                        metrics=self.evaluate(*data.validation) if len(data.validation[0]) else {},
                    )
                )
        self._net.eval()

    def log_probabilities(self, x: npt.NDArray[Any]) -> FloatArray:
        """Log-probabilities ``(n, vocabulary)`` of the character after each of ``x``
        (indices), each position seeing up to ``context`` characters of its window."""
        import torch

        ids = np.asarray(x, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self._info.n_classes):
            raise ValueError(f"character indices must lie in 0..{self._info.n_classes - 1}")
        context = self._params.context
        out = np.empty((len(ids), self._info.n_classes), dtype=np.float64)
        self._net.eval()
        with torch.no_grad():
            chunk = 256 * context  # windows per forward pass: 256
            for first in range(0, len(ids), chunk):
                part = ids[first : first + chunk]
                full = len(part) // context * context
                pieces = []
                if full:
                    windows = torch.as_tensor(part[:full].reshape(-1, context), device=self._device)
                    pieces.append(self._net(windows).reshape(full, -1))
                if full < len(part):
                    tail = torch.as_tensor(part[full:][None], device=self._device)
                    pieces.append(self._net(tail)[0])
                logits = torch.cat(pieces).double()
                out[first : first + len(part)] = torch.log_softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict_arrays(self, x: npt.NDArray[Any]) -> FloatArray:
        probabilities: FloatArray = np.exp(self.log_probabilities(x))
        return probabilities

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        targets = np.asarray(y, dtype=np.int64).reshape(-1)
        log_p = self.log_probabilities(x)
        nll = float(-log_p[np.arange(len(targets)), targets].mean())
        counts = np.asarray(self._preprocessing["train_counts"], dtype=np.float64) + 1.0
        unigram = np.log(counts / counts.sum())
        return {
            "perplexity": math.exp(nll),
            "cross_entropy": nll,
            "accuracy": float(np.mean(np.argmax(log_p, axis=1) == targets)),
            "unigram_perplexity": math.exp(float(-unigram[targets].mean())),
        }

    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        requests = [_request(i, item) for i, item in enumerate(inputs)]
        index = {char: i for i, char in enumerate(self._info.classes)}
        answers = []
        for i, (prompt, max_new, temperature, seed) in enumerate(requests):
            unknown = sorted({c for c in prompt if c not in index})
            if unknown:
                raise ValueError(
                    f"input {i}: the prompt has {len(unknown)} character(s) outside the model's "
                    f"vocabulary: {''.join(unknown[:20])!r}"
                )
            ids = [index[c] for c in prompt]
            new = self._generate(ids, max_new, temperature, seed)
            answers.append(
                {"prompt": prompt, "completion": "".join(str(self._info.classes[j]) for j in new)}
            )
        return answers

    def _generate(self, ids: list[int], count: int, temperature: float, seed: int) -> list[int]:
        import torch

        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        context = self._params.context
        tokens = list(ids)
        self._net.eval()
        with torch.no_grad():
            for _ in range(count):
                window = torch.as_tensor([tokens[-context:]], device=self._device)
                logits = self._net(window)[0, -1].double().cpu()
                if temperature == 0:
                    choice = int(torch.argmax(logits))
                else:
                    weights = torch.softmax(logits / temperature, dim=-1)
                    choice = int(torch.multinomial(weights, 1, generator=generator))
                tokens.append(choice)
        return tokens[len(ids) :]

    def input_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "max_new_chars": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_NEW_CHARS,
                    "default": 100,
                },
                "temperature": {"type": "number", "minimum": 0, "maximum": 10, "default": 0.8},
                "seed": {"type": "integer", "minimum": 0, "default": 0},
            },
            "required": ["prompt"],
            "additionalProperties": False,
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch_checkpoint.save_weights(self._net, directory)
        meta = {
            "format": FORMAT_VERSION,
            "plugin": TinyLMPlugin.name,
            "params": self._params.model_dump(mode="json"),
            "info": self._info.to_json(),
        }
        write_text_atomically(directory / VOCAB_FILE, json.dumps(self._preprocessing) + "\n")
        write_text_atomically(directory / META_FILE, json.dumps(meta, indent=2) + "\n")


def _request(i: int, item: Any) -> tuple[str, int, float, int]:
    """One checked input of ``predict``: (prompt, max_new_chars, temperature, seed)."""
    if not isinstance(item, dict):
        raise ValueError(f'input {i}: expected an object {{"prompt": "..."}}')
    extra = sorted(set(item) - {"prompt", "max_new_chars", "temperature", "seed"})
    if extra:
        raise ValueError(
            f"input {i}: unknown fields {extra}; it takes prompt, max_new_chars, temperature, seed"
        )
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"input {i}: prompt must be a non-empty string")
    max_new = item.get("max_new_chars", 100)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 0 <= max_new <= 2000:
        raise ValueError(f"input {i}: max_new_chars must be an integer 0..{MAX_NEW_CHARS}")
    temperature = item.get("temperature", 0.8)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 10
    ):
        raise ValueError(f"input {i}: temperature must be a number 0..10 (0: greedy)")
    seed = item.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"input {i}: seed must be a non-negative integer")
    return prompt, max_new, float(temperature), seed


def _check_utf8(raw: bytes, *, final: bool, where: str) -> None:
    from dcsched.core.spec import SpecError

    if b"\x00" in raw:
        raise SpecError([f"{where} holds NUL bytes; it is not text (give a UTF-8 text file)"])
    try:
        codecs.getincrementaldecoder("utf-8")().decode(raw, final=final)
    except UnicodeDecodeError as exc:
        raise SpecError(
            [f"{where} is not UTF-8 (invalid byte at offset {exc.start}); re-encode it as UTF-8"]
        ) from None


def _build(params: TinyLMParams, vocabulary: int, device: str) -> torch.nn.Module:
    import torch
    from torch import nn
    from torch.nn import functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width = params.width
            self.norm1 = nn.LayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(
                nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
            )
            self.drop = nn.Dropout(params.dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, length, width = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
            shape = (batch, length, params.heads, width // params.heads)
            q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
            attended = functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=params.dropout if self.training else 0.0
            )
            x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, length, width)))
            out: torch.Tensor = x + self.drop(self.mlp(self.norm2(x)))
            return out

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chars = nn.Embedding(vocabulary, params.width)
            self.positions = nn.Embedding(params.context, params.width)
            self.blocks = nn.Sequential(*(Block() for _ in range(params.layers)))
            self.norm = nn.LayerNorm(params.width)
            self.head = nn.Linear(params.width, vocabulary)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            where = torch.arange(ids.shape[1], device=ids.device)
            x = self.chars(ids) + self.positions(where)
            logits: torch.Tensor = self.head(self.norm(self.blocks(x)))
            return logits

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CharTransformer().to(device)


def _reset(net: torch.nn.Module) -> None:
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
