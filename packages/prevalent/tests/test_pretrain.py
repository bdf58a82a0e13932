"""Pretraining triplets, action targets, the pretrain CLI, resume and a 2-process DDP step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgm_core.testing import run_distributed
from dgm_core.training import TrainingRun
from prevalent.data.synthetic import make_synthetic_dataset
from prevalent.env import IGNORE_ACTION, STOP_ACTION, BatchNavEnv, write_feature_store
from prevalent.model.encoder import EncoderConfig
from prevalent.model.heads import IGNORE_INDEX, PrevalentPretrainingModel
from prevalent.model.masking import MaskingRule
from prevalent.model.pretrained import load_bundle
from prevalent.model.tokenizer import InstructionTokenizer, build_tokenizer
from prevalent.pretrain import (
    PretrainConfig,
    TripletBatcher,
    accumulate_gradients,
    evaluate,
    main,
    teacher_triplets,
)
from prevalent.rollout import open_world
from prevalent.tasks import TaskOptions, fixed_sample, get_task, training_texts

TINY_MODEL = [
    "--hidden-size",
    "16",
    "--num-attention-heads",
    "2",
    "--intermediate-size",
    "32",
    "--text-layers",
    "1",
    "--cross-layers",
    "1",
    "--angle-feature-size",
    "8",
    "--vocab-size",
    "200",
    "--max-text-length",
    "48",
]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    return make_synthetic_dataset(
        folder,
        seed=3,
        houses=3,
        unseen_houses=1,
        rows=1,
        cols=2,
        feature_size=8,
        paths_per_house=3,
        val_paths_per_house=2,
        dialogs_per_house=2,
        hanna_per_house=2,
    )


def tiny_args(world: Path, run_dir: Path, steps: int = 3, *extra: str) -> list[str]:
    return [
        "--data",
        str(world),
        "--run-dir",
        str(run_dir),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--eval-triplets",
        "8",
        "--log-every",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--warmup-steps",
        "100",
        *TINY_MODEL,
        *extra,
    ]


def _tiny_encoder_config(tokenizer: InstructionTokenizer, **overrides) -> EncoderConfig:
    """A 16-wide encoder with one text and one cross layer, for ``tokenizer``'s vocabulary."""
    sizes = dict(
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        text_layers=1,
        cross_layers=1,
        angle_feature_size=8,
    )
    return EncoderConfig(vocab_size=tokenizer.vocab_size, **{**sizes, **overrides})


def test_teacher_triplets_follow_the_reference_path_and_end_with_stop(tiny_world):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(world.data_dir, "train", TaskOptions())
    triplets = teacher_triplets(episodes, world)
    # one triplet per viewpoint of each (shortest) reference path: every move plus the final STOP
    assert len(triplets) == sum(len(e.path) for e in episodes)
    for b, episode in enumerate(episodes[:5]):
        visited = [t.viewpoint for t in triplets if t.episode == b]
        assert visited == episode.path


def test_batched_action_targets_are_the_teacher_actions(tiny_world):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(world.data_dir, "train", TaskOptions())
    triplets = teacher_triplets(episodes, world)
    tokenizer = InstructionTokenizer.train([e.instruction for e in episodes], vocab_size=200)
    rule = MaskingRule(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    batcher = TripletBatcher(episodes, triplets, world, tokenizer, 48, 8, rule)
    indices = list(range(len(triplets)))[:12]
    batch = batcher.batch(indices, torch.Generator().manual_seed(0))
    k = batch.num_candidates
    assert batch.views.shape == (12, 36 + k, 8 + 8)
    assert batch.vision_mask[:, :36].all()
    env = BatchNavEnv(world.graphs)
    for row, index in enumerate(indices):
        t = triplets[index]
        episode = episodes[t.episode]
        env.reset([episode.scan], [t.viewpoint], [t.heading], [t.elevation])
        candidates = env.candidates()[0]
        action = int(batch.action_labels[row])
        assert action != IGNORE_ACTION
        if t.viewpoint == episode.path[-1]:
            assert action == STOP_ACTION
        else:
            step = episode.path.index(t.viewpoint)
            assert candidates[action].viewpoint == episode.path[step + 1]
            assert batch.vision_mask[row, 36 + action - 1]  # the target candidate token is real
        assert int(batch.vision_mask[row, 36:].sum()) == len(candidates) - 1


def test_held_out_triplets_are_a_fixed_random_sample_of_every_step_stop_included(tiny_world):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(world.data_dir, "val_unseen", TaskOptions())
    triplets = teacher_triplets(episodes, world)
    count = len(triplets) // 3
    sample = fixed_sample(triplets, count, seed=0)
    assert len(sample) == count and sample == fixed_sample(triplets, count, seed=0)
    assert sample != triplets[:count]  # not the first steps of the first paths
    positions = [triplets.index(t) for t in sample]
    assert positions == sorted(positions)
    ends = {(t.episode, t.viewpoint) for t in triplets if t.viewpoint == episodes[t.episode].path[-1]}
    stops = sum((t.episode, t.viewpoint) in ends for t in sample)
    # STOP triplets appear in about their true share (one per path) rather than not at all.
    assert 0.5 * len(ends) / len(triplets) <= stops / count <= 1.5 * len(ends) / len(triplets)
    assert fixed_sample(triplets, len(triplets) + 5, seed=0) == triplets


def test_held_out_action_accuracy_splits_into_stop_and_move(tiny_world):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(world.data_dir, "val_unseen", TaskOptions())
    triplets = fixed_sample(teacher_triplets(episodes, world), 40, seed=1)
    tokenizer = InstructionTokenizer.train([e.instruction for e in episodes], vocab_size=200)
    rule = MaskingRule(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    batcher = TripletBatcher(episodes, triplets, world, tokenizer, 48, 8, rule)
    config = _tiny_encoder_config(
        tokenizer, pad_token_id=tokenizer.pad_id, image_feature_size=world.feature_size
    )
    torch.manual_seed(0)
    metrics = evaluate(PrevalentPretrainingModel(config), batcher, 16, torch.device("cpu"), seed=0)
    labels = batcher.batch(list(range(len(triplets))), torch.Generator().manual_seed(0)).action_labels
    share = float((labels == STOP_ACTION).double().mean())
    assert metrics["eval_stop_share"] == pytest.approx(share) and 0 < share < 1
    combined = share * metrics["eval_stop_accuracy"] + (1 - share) * metrics["eval_move_accuracy"]
    assert combined == pytest.approx(metrics["eval_action_accuracy"])


def test_pretrain_cli_logs_heldout_accuracies_and_writes_a_bundle(tiny_world, tmp_path):
    run_dir = tmp_path / "pt"
    assert main(tiny_args(tiny_world, run_dir, 4)) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_mlm_accuracy" in r and "eval_action_accuracy" in r for r in rows)
    assert any("mlm_loss" in r and "action_loss" in r for r in rows)
    model, tokenizer = load_bundle(run_dir / "encoder")
    assert model.config.hidden_size == 16 and model.config.image_feature_size == 8
    assert tokenizer.vocab_size == model.config.vocab_size
    record = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= record["eval_action_accuracy"] <= 1.0


def test_pretrain_losses_fall(tiny_world, tmp_path):
    run_dir = tmp_path / "fall"
    args = tiny_args(tiny_world, run_dir, 40, "--lr", "3e-3", "--batch-size", "8", "--eval-every", "100")
    assert main([*args, "--warmup-steps", "1"]) == 0
    rows = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in line
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-10:]) / 10 < 0.95 * sum(losses[:5]) / 5


def test_resume_continues_bit_identically(tiny_world, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(tiny_args(tiny_world, straight, 4, "--checkpoint-every", "2")) == 0
    # Each run learns its own vocabulary (no file shared between them): the same bytes.
    assert main(tiny_args(tiny_world, resumed, 2, "--checkpoint-every", "2")) == 0
    assert (resumed / "tokenizer.json").read_bytes() == (straight / "tokenizer.json").read_bytes()
    assert main(tiny_args(tiny_world, resumed, 4, "--checkpoint-every", "2")) == 0
    a = load_file(str(straight / "encoder" / "model.safetensors"))
    b = load_file(str(resumed / "encoder" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_four_micro_batches_of_8_give_the_gradients_of_one_batch_of_32(tiny_world, tmp_path):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(world.data_dir, "train", TaskOptions())
    triplets = teacher_triplets(episodes, world)
    tokenizer = InstructionTokenizer.train([e.instruction for e in episodes], vocab_size=200)
    rule = MaskingRule(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    batch = TripletBatcher(episodes, triplets, world, tokenizer, 48, 8, rule).batch(
        list(range(32)), torch.Generator().manual_seed(0)
    )
    masked_per_micro_batch = (batch.mlm_labels != IGNORE_INDEX).view(4, -1).sum(dim=1)
    assert len(set(masked_per_micro_batch.tolist())) > 1  # unequal: a plain mean of means would be off
    config = _tiny_encoder_config(
        tokenizer,
        image_feature_size=8,
        max_text_length=48,
        dropout=0.0,  # both passes: the same function
    )
    torch.manual_seed(0)
    model = PrevalentPretrainingModel(config)

    # The reference: one batch of 32, the model's own mean losses.
    whole = model(**batch.model_inputs())
    whole.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    seen: list[int] = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    cfg = PretrainConfig(run_dir=str(tmp_path / "run"), grad_accum=4, device="cpu", progress=False)
    with TrainingRun(cfg, model_config={}, name="accumulation-check") as run:
        losses = accumulate_gradients(run, model, batch)
    assert seen == [8, 8, 8, 8]
    assert {name for name, p in model.named_parameters() if p.grad is not None} == set(expected)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(losses["loss"], whole.loss.detach())
    torch.testing.assert_close(losses["mlm_loss"], whole.mlm_loss.detach())


def test_pretrain_cli_with_grad_accum_logs_the_losses_of_the_whole_step(tiny_world, tmp_path):
    first_losses = []
    for name, split in (
        ("whole", ["--batch-size", "8"]),
        ("accum", ["--batch-size", "4", "--grad-accum", "2"]),
    ):
        run_dir = tmp_path / name
        args = [*tiny_args(tiny_world, run_dir, 1, "--eval-every", "100", "--dropout", "0"), *split]
        assert main(args) == 0
        assert json.loads((run_dir / "config.json").read_text())["run"]["batch_size"] == int(split[1])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        first_losses.append(next(r for r in rows if "mlm_loss" in r))
    whole, accumulated = first_losses
    for name in ("loss", "mlm_loss", "action_loss"):  # the same 8 triplets, the same masks
        assert accumulated[name] == pytest.approx(whole[name], rel=1e-5)


def test_two_vocabulary_builds_are_byte_identical(tiny_world, tmp_path):
    """Every WordPiece training on the same texts writes the same file. (The tokenizers trainer
    alone numbered and tied pieces in hash-map order, which changes between trainings.)"""
    texts = training_texts(tiny_world)
    for k in range(3):
        build_tokenizer(lambda: texts, 1000, cache=tmp_path / f"build-{k}.json")
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 3
    assert len({f.read_bytes() for f in files}) == 1
    # Still a plain WordPiece vocabulary: continuation pieces are ordinary tokens, not special ones.
    tokenizer = InstructionTokenizer.load(files[0])
    pieces = tokenizer.tokenizer.encode("walk ##e", add_special_tokens=False).tokens
    assert pieces[0] == "walk" and "##e" not in pieces
    assert tokenizer.decode(tokenizer.token_ids(texts[0], 200)[0]) == texts[0].lower()


@pytest.mark.slow
def test_vocabulary_builds_in_separate_processes_are_byte_identical(tiny_world, tmp_path):
    """Each process seeds its hash maps differently: two single-process builds, the same file."""
    build = (
        "import sys; from pathlib import Path; from prevalent.model.tokenizer import build_tokenizer; "
        "from prevalent.tasks import training_texts; "
        "build_tokenizer(lambda: training_texts(Path(sys.argv[1])), 1000, cache=Path(sys.argv[2]))"
    )
    for name in ("a.json", "b.json"):
        subprocess.run(
            [sys.executable, "-c", build, str(tiny_world), str(tmp_path / name)], check=True, timeout=300
        )
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def _store_without(world, lacking: set[tuple[str, str]], folder: Path) -> Path:
    """A copy of ``world``'s feature store without the ``lacking`` (scan, viewpoint) pairs."""
    items = [
        (scan, vp, world.features[scan, vp])
        for scan in world.graphs.available_scans()
        for vp in world.graphs[scan].viewpoints
        if (scan, vp) in world.features and (scan, vp) not in lacking
    ]
    return write_feature_store(folder, items, dtype="float32")


def test_features_missing_for_the_triplets_are_refused_before_training(tiny_world, tmp_path, capsys):
    world = open_world(str(tiny_world), "")
    held_out = get_task("r2r").load(world.data_dir, "val_unseen", TaskOptions())
    # The start of a held-out path (an unseen house): an unchecked run would meet it only at its
    # first evaluation, after training.
    lacking = (held_out[0].scan, held_out[0].start)
    store = _store_without(world, {lacking}, tmp_path / "partial")
    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_world, run_dir, 4, "--features", str(store))) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "lacks features" in error[0]
    assert f"scan {lacking[0]} viewpoint(s) {lacking[1]}" in error[0]
    assert not (run_dir / "checkpoints").exists()
    metrics = run_dir / "metrics.jsonl"
    assert not metrics.exists() or "loss" not in metrics.read_text()  # no step was trained

    scan = held_out[0].scan  # a whole scan missing is named as such
    store = _store_without(
        world, {(scan, vp) for vp in world.graphs[scan].viewpoints}, tmp_path / "no-scan.safetensors"
    )
    assert main(tiny_args(tiny_world, tmp_path / "run2", 4, "--features", str(store))) == 2
    assert f"scan {scan} (none of its" in capsys.readouterr().err


def test_bad_input_is_a_one_line_error(tiny_world, tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the run opened: nothing written


def _ddp_pretrain_step(rank: int, world_size: int, world: str, run_dir: str) -> dict:
    assert main(tiny_args(Path(world), Path(run_dir), 2, "--eval-every", "100")) == 0
    from prevalent.pretrain import PrevalentPretrainingModel  # noqa: F401  (import inside the worker)

    state = load_file(str(Path(run_dir) / "checkpoints" / "step_000002" / "model.safetensors"))
    return {"rank": rank, "sum": float(sum(v.double().sum() for v in state.values()))}


@pytest.mark.slow
def test_two_process_ddp_step(tiny_world, tmp_path):
    results = run_distributed(_ddp_pretrain_step, 2, str(tiny_world), str(tmp_path / "ddp"))
    assert [r["rank"] for r in results] == [0, 1]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    assert (tmp_path / "ddp" / "encoder" / "model.safetensors").is_file()


@pytest.mark.integration
def test_teacher_triplets_on_real_r2r_paths_with_standard_shaped_features(vln_data):
    """Real Matterport graphs and R2R items; features of the standard 36 x 2048 shape, synthesised."""
    import numpy as np

    from prevalent.env import InMemoryFeatureStore, NavGraphs
    from prevalent.rollout import World

    graphs = NavGraphs(vln_data / "connectivity")
    episodes = get_task("r2r").load(vln_data, "val_seen", TaskOptions())[:12]
    rng = np.random.default_rng(0)
    store = InMemoryFeatureStore(
        {
            (e.scan, vp): rng.standard_normal((36, 2048)).astype(np.float32)
            for e in episodes
            for vp in graphs[e.scan].viewpoints
        }
    )
    world = World(vln_data, graphs, store, synthetic=False)
    triplets = teacher_triplets(episodes, world)
    assert len(triplets) == sum(len(e.path) for e in episodes)
    tokenizer = InstructionTokenizer.train([e.instruction for e in episodes], vocab_size=300)
    rule = MaskingRule(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    batch = TripletBatcher(episodes, triplets, world, tokenizer, 80, 128, rule).batch(
        list(range(8)), torch.Generator().manual_seed(0)
    )
    assert batch.views.shape[-1] == 2048 + 128
    assert (batch.action_labels >= 0).all()


def test_text_stream_initialises_from_a_local_bert_checkpoint(tiny_world, tmp_path):
    from transformers import BertConfig, BertModel

    from prevalent.model.encoder import EncoderConfig
    from prevalent.model.heads import PrevalentPretrainingModel
    from prevalent.pretrain import init_text_stream_from_bert

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {
            w
            for line in (tiny_world / "instructions.txt").read_text().split()
            for w in [line.strip(".,").lower()]
        }
    )
    bert_dir = tmp_path / "bert"
    bert = BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    )
    bert.save_pretrained(bert_dir)
    (bert_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    config = EncoderConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        text_layers=1,
        cross_layers=1,
        image_feature_size=8,
        angle_feature_size=8,
        max_text_length=48,
    )
    model = PrevalentPretrainingModel(config)
    init_text_stream_from_bert(model, str(bert_dir))
    theirs = bert.encoder.layer[0].state_dict()
    for key, value in model.encoder.text_layers[0].state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert torch.equal(model.encoder.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    # position table cut to max_text_length
    assert torch.equal(
        model.encoder.embeddings.position_embeddings.weight, bert.embeddings.position_embeddings.weight[:48]
    )
    # the CLI takes the BERT vocabulary and refuses a size that does not fit
    args = tiny_args(tiny_world, tmp_path / "run", 1, "--bert", str(bert_dir))
    assert main(args) == 0
    _, tokenizer = load_bundle(tmp_path / "run" / "encoder")
    assert tokenizer.vocab_size == len(words)
    bad = [
        a if a != "16" else "32" for a in tiny_args(tiny_world, tmp_path / "bad", 1, "--bert", str(bert_dir))
    ]
    assert main(bad) == 2


@pytest.mark.slow
def test_two_torchrun_processes_on_fresh_run_dirs_prepare_once_and_finish(tiny_world, tmp_path):
    # Real processes under torchrun (the in-process harness opens the process group first, so it
    # cannot show preparation racing ahead of it). Rank 0 learns the vocabulary inside
    # run.main_process_first(); rank 1 must wait for it and reuse it. Repeated on fresh run dirs.
    import os

    from dgm_core.runtime.logging import read_metrics

    tokenizers = []
    for attempt in range(2):
        run_dir = tmp_path / f"ddp{attempt}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "prevalent.pretrain",
                *tiny_args(tiny_world, run_dir, 3),
                "--nproc-per-node",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
        assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
        tokenizers.append((run_dir / "tokenizer.json").read_bytes())
        assert (run_dir / "encoder" / "tokenizer.json").read_bytes() == tokenizers[-1]
    assert tokenizers[0] == tokenizers[1]
