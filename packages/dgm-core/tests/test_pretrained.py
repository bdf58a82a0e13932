"""The one export format: config.json + model.safetensors, atomic, tied tensors once, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dgm_core.errors import UserError
from dgm_core.pretrained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PretrainedError,
    load_pretrained,
    read_pretrained_config,
    save_pretrained,
)
from dgm_core.testing import check_pretrained_round_trip


class TinyTiedLM(torch.nn.Module):
    """An embedding tied to the output projection, as GPT-2's lm_head is to wte."""

    def __init__(self, vocab: int = 11, width: int = 6):
        super().__init__()
        self.config = {"vocab": vocab, "width": width}
        self.embed = torch.nn.Embedding(vocab, width)
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))) * self.scale)


def _build(config: dict) -> TinyTiedLM:
    return TinyTiedLM(config["vocab"], config["width"])


def test_round_trip_keeps_values_ties_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = TinyTiedLM()
    ids = torch.randint(0, 11, (3, 5))
    loaded = check_pretrained_round_trip(
        model,
        save=lambda folder: save_pretrained(folder, model, model.config, {"notes.txt": "hello"}),
        load=lambda folder: load_pretrained(folder, _build)[0],
        folder=tmp_path / "export",
        forward=lambda m: m(ids),
    )
    assert loaded.head.weight is loaded.embed.weight
    assert (tmp_path / "export" / "notes.txt").read_text() == "hello"
    assert read_pretrained_config(tmp_path / "export") == {"vocab": 11, "width": 6}


def test_tied_tensor_is_stored_once(tmp_path):
    model = TinyTiedLM()
    save_pretrained(tmp_path / "m", model, model.config)
    with safe_open(str(tmp_path / "m" / WEIGHTS_FILE), "pt") as handle:
        names = set(handle.keys())
    assert len({"embed.weight", "head.weight"} & names) == 1
    assert {"mix.weight", "mix.bias", "scale"} <= names


def test_round_trip_check_catches_a_lossy_loader(tmp_path):
    model = TinyTiedLM()

    def lossy_load(folder):
        loaded, _ = load_pretrained(folder, _build)
        with torch.no_grad():
            loaded.mix.bias.add_(1e-3)
        return loaded

    with pytest.raises(AssertionError, match="mix.bias"):
        check_pretrained_round_trip(
            model, lambda f: save_pretrained(f, model, model.config), lossy_load, tmp_path / "m"
        )


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    folder = tmp_path / "m"
    first = TinyTiedLM()
    save_pretrained(folder, first, {"vocab": 11, "width": 6, "generation": 1})
    before = (folder / WEIGHTS_FILE).read_bytes()

    def broken_writer(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(folder, TinyTiedLM(), {"generation": 2}, {"tokenizer.json": broken_writer})
    assert (folder / WEIGHTS_FILE).read_bytes() == before
    assert json.loads((folder / CONFIG_FILE).read_text())["generation"] == 1
    assert not (folder / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_export_replaces_an_older_export(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(folder, TinyTiedLM(), {"generation": 1}, {"old.txt": "x"})
    save_pretrained(folder, TinyTiedLM(), {"generation": 2})
    assert read_pretrained_config(folder) == {"generation": 2}
    assert not (folder / "old.txt").exists()


def test_export_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "precious.csv").write_text("keep me")
    with pytest.raises(PretrainedError, match="refusing to replace"):
        save_pretrained(folder, TinyTiedLM(), {"vocab": 11})
    assert (folder / "precious.csv").read_text() == "keep me"


def test_exported_files_get_normal_permissions(tmp_path):
    folder = save_pretrained(tmp_path / "m", TinyTiedLM(), {"vocab": 11})
    # mkdtemp/mkstemp create private 0700/0600 entries; an export must be readable like any other file.
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert (folder / CONFIG_FILE).stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_folder", "model folder not found"),
        ("no_config", "config.json missing"),
        ("bad_config", "corrupt"),
        ("no_weights", "model.safetensors missing"),
        ("bad_weights", "corrupt or unreadable"),
    ],
)
def test_broken_model_folders_are_one_line_errors(tmp_path, breakage, message):
    folder = save_pretrained(tmp_path / "m", TinyTiedLM(), {"vocab": 11, "width": 6})
    if breakage == "no_folder":
        folder = tmp_path / "absent"
    elif breakage == "no_config":
        (folder / CONFIG_FILE).unlink()
    elif breakage == "bad_config":
        (folder / CONFIG_FILE).write_text("{not json")
    elif breakage == "no_weights":
        (folder / WEIGHTS_FILE).unlink()
    else:
        (folder / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    with pytest.raises(PretrainedError, match=message) as error:
        load_pretrained(folder, _build)
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)


def test_weights_of_another_size_are_a_clear_error(tmp_path):
    folder = save_pretrained(tmp_path / "m", TinyTiedLM(width=6), {"vocab": 11, "width": 6})
    with pytest.raises(PretrainedError, match="do not fit the model"):
        load_pretrained(folder, TinyTiedLM(width=8))


def test_missing_tensors_are_named_unless_not_strict(tmp_path):
    class Bigger(TinyTiedLM):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    folder = save_pretrained(tmp_path / "m", TinyTiedLM(), {"vocab": 11, "width": 6})
    with pytest.raises(PretrainedError, match=r"missing 2 tensor\(s\), e.g. extra.bias"):
        load_pretrained(folder, Bigger())
    model, _ = load_pretrained(folder, Bigger(), strict=False)
    assert isinstance(model, Bigger)


def test_extra_files_cannot_overwrite_the_model_or_escape(tmp_path):
    for name in (CONFIG_FILE, WEIGHTS_FILE, "../outside.txt"):
        with pytest.raises(ValueError, match="reserved or leaves"):
            save_pretrained(tmp_path / "m", TinyTiedLM(), {}, {name: "x"})
    assert not (tmp_path / "outside.txt").exists()


def test_weights_file_is_readable_by_others_like_any_file(tmp_path):
    # safetensors creates its files 0600; an export shared with colleagues must follow the umask.
    folder = save_pretrained(tmp_path / "m", TinyTiedLM(), {"vocab": 11})
    assert (folder / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o666 & ~_umask()
