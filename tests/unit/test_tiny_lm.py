"""The tiny-lm built-in: conformance, its text checks, generation and the saved vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcsched.core.spec import SpecError
from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.api import DataError
from dcsched.plugins.registry import load_plugin
from dcsched.plugins.testing import check_plugin

BOOK = Path(__file__).resolve().parents[2] / "examples" / "tiny-lm" / "genesis-exodus.txt"
SMALL = {"context": 16, "width": 16, "heads": 2, "layers": 1, "steps_per_epoch": 5}
PROMPTS = [
    {"prompt": "And God said", "max_new_chars": 20},
    {"prompt": "The", "max_new_chars": 10, "temperature": 0},
    {"prompt": "x", "max_new_chars": 0},
]


def _small_text(tmp_path: Path, size: int = 20_000, validation_size: float = 0.0) -> DataSpec:
    path = tmp_path / "small.txt"
    path.write_bytes(BOOK.read_bytes()[:size])
    return DataSpec(source=f"text:{path}", test_size=0.2, validation_size=validation_size)


def test_tiny_lm_conforms(tmp_path: Path) -> None:
    metrics = check_plugin(
        load_plugin("tiny-lm"),
        _small_text(tmp_path, validation_size=0.1),
        tmp_path / "check",
        params=SMALL,
        train=TrainSpec(epochs=2, batch_size=8, lr=0.003),
        inputs=PROMPTS,
    )
    assert set(metrics) == {"perplexity", "cross_entropy", "accuracy", "unigram_perplexity"}


def test_the_text_is_cut_into_train_validation_and_test_parts_in_order(tmp_path: Path) -> None:
    plugin = load_plugin("tiny-lm")
    data = plugin.load_data(_small_text(tmp_path, size=1000, validation_size=0.1))
    assert data.x_val is not None and data.y_val is not None
    text = BOOK.read_bytes()[:1000].decode()
    index = {char: i for i, char in enumerate(data.info.classes)}
    ids = [index[c] for c in text]
    # 1000 characters: 700 train, 100 validation, 200 test, contiguous and in that order
    assert [*data.x_train, data.y_train[-1]] == ids[:700]
    assert [*data.x_val, data.y_val[-1]] == ids[700:800]
    assert [*data.x_test, data.y_test[-1]] == ids[800:]
    counts = data.preprocessing["train_counts"]
    assert sum(counts) == 700  # the unigram baseline counts the training part only
    without = plugin.load_data(_small_text(tmp_path, size=1000))
    assert without.x_val is None and list(without.x_test) == list(data.x_test)


def test_tiny_lm_generates_from_a_prompt_and_keeps_its_vocabulary(tmp_path: Path) -> None:
    plugin = load_plugin("tiny-lm")
    data = plugin.load_data(_small_text(tmp_path))
    assert "".join(data.info.classes) == "".join(sorted(set(BOOK.read_text()[:20_000])))
    model = plugin.create(plugin.validate_params(SMALL), data.info, "cpu")
    model.fit(data, TrainSpec(epochs=1, batch_size=8), 0, lambda r: None, None)
    model.save(tmp_path / "model")
    loaded = plugin.load(tmp_path / "model", "cpu")
    answers = loaded.predict(PROMPTS)
    assert [len(a["completion"]) for a in answers] == [20, 10, 0]
    assert all(set(a["completion"]) <= set(data.info.classes) for a in answers)
    assert answers == model.predict(PROMPTS)
    # Seeded sampling: another seed, another completion (the same seed, the same one).
    other = loaded.predict([{**PROMPTS[0], "seed": 7}])[0]["completion"]
    assert other != answers[0]["completion"]
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        loaded.predict([{"prompt": "Zebra \u00e9"}])
    with pytest.raises(ValueError, match="unknown fields"):
        loaded.predict([{"prompt": "And", "tokens": 5}])
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        loaded.predict([{"prompt": ""}])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty; give a UTF-8 text"),
        (b"secret\x00\x01binary", "holds NUL bytes"),
        (b"secret \xff\xfe latin", "is not UTF-8 (invalid byte at offset 7)"),
    ],
)
def test_bad_text_is_refused_at_submit_without_quoting_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes(content)
    with pytest.raises(SpecError) as excinfo:
        load_plugin("tiny-lm").check_data(DataSpec(source=f"text:{path}"))
    assert message in str(excinfo.value) and "secret" not in str(excinfo.value)


def test_text_that_cannot_train_fails_at_load(tmp_path: Path) -> None:
    plugin = load_plugin("tiny-lm")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n  \n")
    with pytest.raises(DataError, match="only white space"):
        plugin.load_data(DataSpec(source=f"text:{blank}"))
    short = tmp_path / "short.txt"
    short.write_text("abcab")
    with pytest.raises(DataError, match="fewer than 3"):
        plugin.load_data(DataSpec(source=f"text:{short}"))
    with pytest.raises(SpecError, match="does not take npz data; it takes: text"):
        plugin.check_data(DataSpec(source="npz:/x.npz"))


def test_tiny_lm_params_are_checked() -> None:
    from dcsched.plugins.api import PluginParamsError

    plugin = load_plugin("tiny-lm")
    with pytest.raises(PluginParamsError, match="heads \\(3\\) must divide width \\(64\\)"):
        plugin.validate_params({"heads": 3})
    with pytest.raises(PluginParamsError, match="unknown parameter of tiny-lm; it takes: context"):
        plugin.validate_params({"vocab": 10})
