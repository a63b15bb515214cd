"""Remote config's parts without a daemon: merge patches, the push envelope and its signature, what a push
may not do, and the persisted state."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from edged.config import Config, ConfigError, validate
from edged.remote.checks import inline_secrets, paths_outside
from edged.remote.patch import changed_paths, compose, merge_patch
from edged.remote.push import PushRejected, parse_push, read_key, sign, verify
from edged.remote.store import RemoteState, StateError, StateStore

# RFC 7396 appendix A: target, patch, result.
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}), ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}), ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}), (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]), ({"a": "foo"}, None, None), ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}), ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target, patch, result", RFC_EXAMPLES)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == result
    assert json.dumps(target) == before  # the target is not changed


def _random_patch(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.3:
        return rng.choice([None, 1, "x", [1], {}])
    return {rng.choice("abc"): _random_patch(rng, depth + 1) for _ in range(rng.randint(1, 3))}


def test_composed_patches_do_what_the_two_do_in_turn() -> None:
    """On 20,000 random triples: where ``compose`` gives a patch, it equals applying both; where it cannot
    (a key replaced, then patched), it says so rather than giving a wrong one."""
    rng, composed, refused = random.Random(7), 0, 0
    for _ in range(20_000):
        target, first, second = _random_patch(rng), _random_patch(rng), _random_patch(rng)
        if not isinstance(first, dict) or not isinstance(second, dict):
            continue
        both = compose(first, second)
        if both is None:
            refused += 1
            continue
        composed += 1
        assert merge_patch(target, both) == merge_patch(merge_patch(target, first), second), (target, first, second)
    assert composed > 3 * refused > 0  # both branches are exercised, composing most often
    assert compose({"model": None}, {"model": {"iou": 0.3}}) is None  # reset, then patched: two patches


def test_changed_paths() -> None:
    assert changed_paths({"model": {"iou": 0.3, "classes": None}, "streams": [{}], "x": {}}) == [
        "model.iou", "model.classes", "streams", "x"]


def test_parse_push_takes_json_or_yaml_and_names_what_is_wrong() -> None:
    assert parse_push(b'{"id": "a", "version": 3, "config": {"model": {"iou": 0.3}}}', 1024).patch == {
        "model": {"iou": 0.3}}
    assert parse_push(b"id: b\nversion: 4\nconfig:\n  model: {iou: 0.3}\n", 1024).version == 4
    with pytest.raises(PushRejected) as refused:
        parse_push(b'{"id": 5, "version": -1, "config": [], "extra": 1}', 1024)
    assert [e.split(":")[0] for e in refused.value.errors] == ["id", "version", "config", "extra"]
    with pytest.raises(PushRejected, match="payload of 2000 bytes"):
        parse_push(b" " * 2000, 1024)
    with pytest.raises(PushRejected, match="not valid JSON or YAML"):
        parse_push(b"a: &x [*x]", 1024)  # a recursive alias
    bomb = b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
        b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((c, c) + (c - 1,) * 10) for c in range(98, 106))
    with pytest.raises(PushRejected, match="aliases expand"):
        parse_push(bomb, 4096)


def test_signatures_are_hmac_sha256_of_the_payload(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"  secret key \n")
    key = read_key(key_file)
    assert key == b"secret key"
    payload = b'{"id": "a", "version": 1, "config": {}}'
    verify(payload, sign(payload, key), key)
    verify(payload, sign(payload, key).upper(), key)
    for signature, reason in ((None, "unsigned"), ("", "bad signature"), (sign(payload + b" ", key), "bad signature"),
                              ("é" * 64, "bad signature")):
        with pytest.raises(PushRejected, match=reason):
            verify(payload, signature, key)
    for content, reason in ((b"\n", "empty"), (b"k" * 5000, "not a key")):
        key_file.write_bytes(content)
        with pytest.raises(ConfigError, match=reason):
            read_key(key_file)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key(tmp_path / "missing")


def test_inline_secrets() -> None:
    patch = {"mqtt": {"password": "x", "password_file": "/etc/edged/pw", "username": "u"},
             "streams": [{"name": "a", "source": "rtsp://user:pw@cam/1"}, {"name": "b", "source": "rtsp://cam/2"}],
             "extra": {"api_token": "t", "hmac_key": None}}
    assert [e.split(":")[0] for e in inline_secrets(patch)] == [
        "mqtt.password", "streams[0].source", "extra.api_token"]


def _config(folder: Path, **data: Any) -> Config:
    return validate({"streams": [{"name": "a", "source": "/dev/video0"}], **data}, "test", folder)


def test_pushed_paths_stay_inside_the_allowed_folders(tmp_path: Path) -> None:
    root, outside = tmp_path / "etc", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "labels.txt").write_text("a\n")
    (root / "escape.txt").symlink_to(outside / "labels.txt")
    (root / "labels.txt").write_text("a\n")
    current = _config(root, mqtt={"password_file": str(outside / "pw")})

    def check(patch: dict[str, Any]) -> list[str]:
        merged = merge_patch(current.plain(), patch)
        return paths_outside(patch, validate(merged, "test", root), current, [root])

    assert check({"model": {"labels": "labels.txt"}}) == []
    assert check({"model": {"labels": str(root / "labels.txt")}}) == []
    assert check({"mqtt": {"username": "u"}}) == []  # the password file outside was there already
    assert check({"model": {"labels": "escape.txt"}})[0].startswith("model.labels: ")  # a symlink out
    assert check({"model": {"labels": str(outside / "labels.txt")}})[0].endswith(f"({root})")
    assert "'..' refused" in check({"model": {"labels": "sub/../labels.txt"}})[0]
    assert check({"streams": [{"name": "v", "source": str(outside / "clip.mp4")}]})[0].startswith("streams[0]")
    assert check({"foxglove": {"mcap": {"dir": str(outside)}}})[0].startswith("foxglove.mcap.dir: ")
    assert check({"foxglove": {"mcap": {"dir": str(root / "recordings")}}}) == []


def test_state_is_written_in_two_phases_and_set_aside_when_unusable(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load() is None and store.state == RemoteState()
    pending = store.prepare(store.state.with_push("a", 1, {"model": {"iou": 0.3}}))
    assert not store.path.exists()  # not in force before commit
    pending.commit()
    again = StateStore(tmp_path / "state")
    assert again.load() is None
    assert (again.state.version, again.state.ids, again.state.patches) == (1, ["a"], [{"model": {"iou": 0.3}}])
    second = again.state.with_push("b", 2, {"model": {"iou": None}, "health": {"interval_s": 2}})
    assert second.patches == [{"model": {"iou": None}, "health": {"interval_s": 2}}]  # folded into one
    third = second.with_push("c", 3, {"health": None}).with_push("d", 4, {"health": {"interval_s": 3}})
    assert len(third.patches) == 2  # reset then patched: kept apart
    again.prepare(third).discard()
    assert [p.name for p in store.path.parent.iterdir()] == [store.path.name]
    store.path.write_text("{not json")
    problem = StateStore(tmp_path / "state").load()
    assert problem is not None and "set aside" in problem
    assert [p.name.split(".bad-")[0] for p in store.path.parent.iterdir()] == ["remote-config.json"]


def test_an_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match=f"state_dir {tmp_path / 'file' / 'state'}: not writable"):
        StateStore(tmp_path / "file" / "state").prepare(RemoteState())
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(StateError, match="not writable"):
            StateStore(locked).prepare(RemoteState())
