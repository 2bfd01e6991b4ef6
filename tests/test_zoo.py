"""Zoo on disk: determinism, resumable builds, and every corrupt-file case."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from auditgame.errors import ZooError
from auditgame.game import AuditorSpec, Game, play
from auditgame.organism import (
    MAX_HEADER_BYTES,
    WEIGHTS,
    Organism,
    build_model,
    max_file_bytes,
    read_weights,
)
from auditgame.run.local import LocalExecutor
from auditgame.secret import PAD_BLOCK, new_key
from auditgame.store import Store
from auditgame.zoo import (
    MANIFEST,
    Manifest,
    Zoo,
    build_fingerprint,
    build_zoo,
    manifest_mac,
    open_key,
)

# weight_stats by its published threshold: calibrated, it would first train 64 clean
# reference models.
WEIGHT_STATS = AuditorSpec(name="weight_stats", params={"calibrate": False})


@pytest.fixture
def zoo_copy(tiny_zoo, tmp_path: Path) -> Zoo:
    root = tmp_path / "copy"
    shutil.copytree(tiny_zoo.zoo.root, root)
    shutil.copy(tiny_zoo.key_path, tmp_path / "copy.key")
    return Zoo(root)


def first(zoo: Zoo) -> Path:
    return zoo.organism_path(zoo.ids[0])


def test_organisms_verify_and_load(tiny_zoo) -> None:
    for oid in tiny_zoo.zoo.ids:
        organism = tiny_zoo.zoo.organism(oid)
        assert organism.card.organism_id() == oid
        logits = organism.model()(torch.zeros(2, 1, 8, 8))
        assert logits.shape == (2, 10)


def test_secrets_unseal_and_match_commitments(tiny_zoo) -> None:
    for oid in tiny_zoo.zoo.ids:
        secret = tiny_zoo.secret(oid)
        assert secret.commitment() == tiny_zoo.zoo.organism(oid).card.secret_commitment
        assert secret.clean_accuracy >= 0.95
        if secret.backdoored:
            assert secret.asr is not None and secret.asr >= 0.9


def test_sealed_files_do_not_reveal_their_content_by_size(tiny_zoo) -> None:
    sizes = {tiny_zoo.zoo.sealed_path(oid).stat().st_size for oid in tiny_zoo.zoo.ids}
    assert len(sizes) == 1
    assert sizes.pop() > PAD_BLOCK


def test_key_lives_outside_the_zoo(tiny_zoo) -> None:
    assert not tiny_zoo.key_path.resolve().is_relative_to(tiny_zoo.zoo.root.resolve())
    with pytest.raises(ValueError, match="outside the zoo"):
        build_zoo("digits", 2, 0, tiny_zoo.zoo.root, key_path=tiny_zoo.zoo.root / "k.key")


def test_build_is_deterministic_and_resumes(tmp_path: Path) -> None:
    first_zoo = build_zoo("digits", 2, 5, tmp_path / "a")
    second_zoo = build_zoo("digits", 2, 5, tmp_path / "b")
    assert first_zoo.ids == second_zoo.ids
    # Simulate a build killed after its first organism: the manifest lists one, incomplete.
    path = tmp_path / "b" / MANIFEST
    manifest = Manifest.model_validate_json(path.read_bytes())
    kept = manifest.model_copy(
        update={
            "organisms": manifest.organisms[:1],
            "indices": manifest.indices[:1],
            "complete": False,
        }
    )
    path.write_text(kept.model_dump_json())
    shutil.rmtree(tmp_path / "b" / "organisms" / manifest.organisms[1])
    with pytest.raises(ZooError, match="interrupted"):
        Zoo(tmp_path / "b")
    events = []
    resumed = build_zoo("digits", 2, 5, tmp_path / "b", on_event=events.append)
    assert resumed.ids == first_zoo.ids
    assert [e.index for e in events] == [manifest.indices[1]]


def test_a_zoo_built_without_a_seed_cannot_be_rebuilt_from_its_public_files(
    tmp_path: Path,
) -> None:
    """The build's seed comes from the key: its public fingerprint matches no guessable seed,
    the same key builds (or resumes) the same zoo, and another key builds other organisms."""
    zoo = build_zoo("digits", 2, None, tmp_path / "a")
    attacks = zoo.manifest.attacks
    assert zoo.manifest.build_fingerprint == build_fingerprint("digits", 2, None, attacks)
    guessed = {build_fingerprint("digits", 2, seed, attacks) for seed in range(100_000)}
    assert zoo.manifest.build_fingerprint not in guessed
    same_key = build_zoo("digits", 2, None, tmp_path / "b", key_path=tmp_path / "a.key")
    assert same_key.ids == zoo.ids
    other_key = build_zoo("digits", 2, None, tmp_path / "c")
    assert set(other_key.ids).isdisjoint(zoo.ids)


def test_a_folder_built_with_other_arguments_is_refused(tiny_zoo) -> None:
    with pytest.raises(ZooError, match="other arguments"):
        build_zoo("digits", 4, 1, tiny_zoo.zoo.root)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=r"zoo\.json is missing"):
        Zoo(tmp_path)


def test_missing_weights(zoo_copy: Zoo) -> None:
    (first(zoo_copy) / WEIGHTS).unlink()
    with pytest.raises(ZooError, match="weights file is missing") as info:
        zoo_copy.organism(zoo_copy.ids[0])
    assert info.value.path.name == WEIGHTS


def test_truncated_weights(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / WEIGHTS
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ZooError, match="truncated") as info:
        zoo_copy.organism(zoo_copy.ids[0])
    assert info.value.path == path


def test_weights_cut_inside_the_header(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / WEIGHTS
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(ZooError, match="truncated"):
        zoo_copy.organism(zoo_copy.ids[0])


def safetensors_bytes(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b'{"w": {"dtype": "F32", "shape": [1]}}', "no valid data_offsets"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', "no valid"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}}', "no valid"),
        (b'{"w": [0, 4]}', "no valid data_offsets"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'"just a string"', "not a JSON object"),
    ],
)
def test_a_hostile_safetensors_header_is_one_error_not_a_traceback(
    tmp_path: Path, header: bytes, problem: str
) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(header, b"\0" * 4))
    with pytest.raises(ZooError, match=problem):
        read_weights(path)


def test_a_header_over_100_mb_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        handle.truncate(MAX_HEADER_BYTES + 16)  # sparse: no 100 MB written
    with pytest.raises(ZooError, match="over 100 MB"):
        read_weights(path)


def test_a_file_larger_than_half_the_memory_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.safetensors"
    with path.open("wb") as handle:
        handle.truncate(max_file_bytes() + 1)  # sparse: nothing written
    with pytest.raises(ZooError, match=r"half this machine's memory.*AUDITGAME_MAX_WEIGHTS_BYTES"):
        read_weights(path)
    path.write_bytes(
        safetensors_bytes(
            b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4
        )
    )
    monkeypatch.setenv("AUDITGAME_MAX_WEIGHTS_BYTES", "16")
    with pytest.raises(ZooError, match=r"over the 0\.0 GiB"):
        read_weights(path)


def test_tampered_weights(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="modified: SHA-256") as info:
        zoo_copy.organism(zoo_copy.ids[0])
    assert info.value.path == path


def test_pickle_in_place_of_weights_is_rejected(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / WEIGHTS
    torch.save({"w": torch.zeros(3)}, path)  # a pickle archive, as a hostile upload might be
    with pytest.raises(ZooError, match=r"not a safetensors file|truncated"):
        zoo_copy.organism(zoo_copy.ids[0])


def test_tampered_card(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / "card.json"
    card = json.loads(path.read_text())
    card["training_data"] = "something else"
    path.write_text(json.dumps(card, sort_keys=True, indent=2) + "\n")
    with pytest.raises(ZooError, match="card hashes to"):
        zoo_copy.organism(zoo_copy.ids[0])


def test_card_that_is_not_json(zoo_copy: Zoo) -> None:
    path = first(zoo_copy) / "card.json"
    path.write_text("{not json")
    with pytest.raises(ZooError, match="not a valid card"):
        zoo_copy.organism(zoo_copy.ids[0])


def test_missing_card(zoo_copy: Zoo) -> None:
    (first(zoo_copy) / "card.json").unlink()
    with pytest.raises(ZooError, match=r"card\.json is missing"):
        zoo_copy.organism(zoo_copy.ids[0])


def test_missing_organism_folder(zoo_copy: Zoo) -> None:
    shutil.rmtree(first(zoo_copy))
    with pytest.raises(ZooError, match="organism folder is missing"):
        zoo_copy.organism(zoo_copy.ids[0])


def test_tampered_sealed_secret(zoo_copy: Zoo, tiny_zoo) -> None:
    path = zoo_copy.sealed_path(zoo_copy.ids[0])
    data = bytearray(path.read_bytes())
    data[100] = ord("A") if data[100] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="fails authentication") as info:
        zoo_copy.secret(zoo_copy.ids[0], tiny_zoo.key)
    assert info.value.path == path


def test_truncated_sealed_secret(zoo_copy: Zoo, tiny_zoo) -> None:
    path = zoo_copy.sealed_path(zoo_copy.ids[0])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ZooError, match="fails authentication"):
        zoo_copy.secret(zoo_copy.ids[0], tiny_zoo.key)


def test_swapped_sealed_secrets_break_the_commitment(zoo_copy: Zoo, tiny_zoo) -> None:
    a, b = zoo_copy.ids[:2]
    pa, pb = zoo_copy.sealed_path(a), zoo_copy.sealed_path(b)
    data_a, data_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(data_b)
    pb.write_bytes(data_a)
    with pytest.raises(ZooError, match="does not match the commitment"):
        zoo_copy.secret(a, tiny_zoo.key)


def test_missing_sealed_secret(zoo_copy: Zoo, tiny_zoo) -> None:
    zoo_copy.sealed_path(zoo_copy.ids[0]).unlink()
    with pytest.raises(ZooError, match="sealed secret is missing"):
        zoo_copy.secret(zoo_copy.ids[0], tiny_zoo.key)


def test_wrong_key(zoo_copy: Zoo, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(new_key())
    with pytest.raises(ZooError, match="does not open this zoo"):
        open_key(zoo_copy, other)
    with pytest.raises(ZooError, match="fails authentication"):
        zoo_copy.secret(zoo_copy.ids[0], other.read_bytes())


def edit_manifest(zoo: Zoo, **changes: object) -> Zoo:
    path = zoo.root / MANIFEST
    manifest = Manifest.model_validate_json(path.read_bytes())
    path.write_text(manifest.model_copy(update=changes).model_dump_json())
    return Zoo(zoo.root)


@pytest.mark.parametrize(
    "change",
    [
        "drop an organism",
        "change the family",
        "change the attacks",
        "re-sign under another key",
        "remove the code",
    ],
)
def test_an_edited_manifest_is_refused_by_the_key_holder(
    zoo_copy: Zoo, tiny_zoo, tmp_path: Path, change: str
) -> None:
    """zoo.json is public and writable; the referee (who holds the key) opens a zoo only if its
    manifest carries the authentication code the build wrote under the key."""
    key_path = tmp_path / "copy.key"
    assert open_key(zoo_copy, key_path) == tiny_zoo.key
    manifest = zoo_copy.manifest
    if change == "drop an organism":
        edited = edit_manifest(
            zoo_copy, organisms=manifest.organisms[1:], indices=manifest.indices[1:]
        )
    elif change == "change the family":
        edited = edit_manifest(zoo_copy, family="mnist")
    elif change == "change the attacks":
        edited = edit_manifest(zoo_copy, attacks=["badnets"])
    elif change == "re-sign under another key":
        edited = edit_manifest(zoo_copy, mac=manifest_mac(manifest, new_key()))
    else:
        edited = edit_manifest(zoo_copy, mac="")
    with pytest.raises(ZooError, match="authentication code"):
        open_key(edited, key_path)
    game = Game(zoo=edited.root, auditors=[WEIGHT_STATS])
    with Store(tmp_path / "r.sqlite") as store, pytest.raises(ZooError, match="authentication"):
        play(game, tiny_zoo.key, store, LocalExecutor(workers=1))


def test_missing_and_malformed_key(zoo_copy: Zoo, tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="key file not found"):
        open_key(zoo_copy, tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_text("hello")
    with pytest.raises(ZooError, match="not a Fernet key"):
        open_key(zoo_copy, bad)


def test_nan_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(path))
    with pytest.raises(ZooError, match="NaN"):
        read_weights(path)


def test_weights_that_do_not_fit_the_architecture(tiny_zoo, tmp_path: Path) -> None:
    organism: Organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    weights = organism.weights()
    weights["head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ZooError, match="do not fit"):
        build_model(organism.card, weights, tmp_path / WEIGHTS)
