import json
import os
import pickle

import pytest
import torch

from densepure.errors import CheckpointError
from densepure.hashing import file_sha256
from densepure.models import build_unet, read_state_dict, save_state_dict


@pytest.fixture
def tiny_checkpoint(improved_tiny, tmp_path):
    model, _ = improved_tiny
    path = tmp_path / "tiny.pt"
    save_state_dict(path, model.state_dict())
    return model, path


def test_roundtrip_official_format(tiny_checkpoint):
    model, path = tiny_checkpoint
    loaded = build_unet(model.config, checkpoint=path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_wrapped_and_ddp_checkpoints_are_unwrapped(tiny_checkpoint, tmp_path):
    model, _ = tiny_checkpoint
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(model.state_dict())


def test_safetensors_roundtrip(tiny_checkpoint, tmp_path):
    pytest.importorskip("safetensors")
    model, _ = tiny_checkpoint
    path = tmp_path / "tiny.safetensors"
    save_state_dict(path, model.state_dict())
    header_bytes = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 length, then a JSON header
    header = json.loads(path.read_bytes()[8:8 + header_bytes])
    assert set(header) - {"__metadata__"} == set(model.state_dict())  # a safetensors file, not a pickle
    loaded = build_unet(model.config, checkpoint=path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == v.dtype and torch.equal(loaded.state_dict()[k], v), k
    path.write_bytes(path.read_bytes()[: 8 + header_bytes + 16])  # cut inside the tensor data
    with pytest.raises(CheckpointError, match="cannot read .* as safetensors"):
        read_state_dict(path)


def test_wrong_architecture_names_keys(improved_tiny, guided_tiny, tmp_path):
    guided, _ = guided_tiny
    path = tmp_path / "guided.pt"
    save_state_dict(path, guided.state_dict())
    with pytest.raises(CheckpointError) as info:
        build_unet(improved_tiny[0].config, checkpoint=path)
    msg = str(info.value)
    assert "does not fit this architecture" in msg
    assert "missing keys" in msg and "unexpected keys" in msg and "shape mismatches" in msg
    assert "expected (" in msg and msg.count("\n") == 0 and len(msg) < 1500


def test_missing_key_is_named(tiny_checkpoint, tmp_path):
    model, _ = tiny_checkpoint
    state = dict(model.state_dict())
    del state["out.2.bias"]
    path = tmp_path / "cut.pt"
    save_state_dict(path, state)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(out\.2\.bias\)"):
        build_unet(model.config, checkpoint=path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="pickled Python objects.*never runs a file's code") as info:
        read_state_dict(path)
    assert "weights_only" not in str(info.value)  # torch's advice to load it unsafely is not passed on


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_state_dict(junk)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(notdict)


def test_file_hash_changes_with_content(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"1")
    h1 = file_sha256(a)
    a.write_bytes(b"2")
    assert h1 != file_sha256(a) and len(h1) == 64
