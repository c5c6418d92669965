from __future__ import annotations

import inspect

import pytest

from flask_jobtastic import keys


def key_for(spec, **arguments):
    pairs = keys.normalize_significant(spec)
    return keys.build_cache_key("app.Task", keys.significant_values("app.Task", pairs, arguments))


def test_concatenation_collision_pair_gives_different_keys():
    spec = [("a", str), ("b", str)]
    assert key_for(spec, a="ab", b="c") != key_for(spec, a="a", b="bc")


def test_same_values_same_key_and_order_of_dict_does_not_matter():
    assert key_for(["x"], x={"a": 1, "b": 2}) == key_for(["x"], x={"b": 2, "a": 1})
    assert key_for(["x"], x=[1, 2]) != key_for(["x"], x=[2, 1])


def test_missing_significant_argument_is_a_clear_type_error():
    with pytest.raises(TypeError, match="significant argument 'b'"):
        key_for([("a", str), ("b", str)], a="1")


def test_unconvertible_argument_names_the_argument():
    with pytest.raises(TypeError, match="'x'.*object"):
        key_for(["x"], x=object())


@pytest.mark.parametrize(
    "prefix",
    ["plain.Name", "naïve module.Klasse", "x" * 600, "with spaces\tand\nnewlines", "ключ.Задача"],
)
def test_keys_are_ascii_without_spaces_and_short(prefix):
    key = keys.build_cache_key(prefix, [("a", "value " * 100)])
    for full in (key, keys.result_key(key), keys.herd_key(key)):
        assert full.isascii()
        assert not any(ch.isspace() for ch in full)
        assert len(full.encode()) <= keys.MAX_KEY_LENGTH


def test_long_prefixes_that_share_a_start_stay_distinct():
    a = keys.build_cache_key("p" * 300 + "A", [])
    b = keys.build_cache_key("p" * 300 + "B", [])
    assert a != b


def test_bad_spec_entry_is_rejected():
    with pytest.raises(TypeError, match="name or a"):
        keys.normalize_significant([("a", "not callable")])


def test_bind_arguments_maps_positional_and_flattens_var_keyword():
    def calculate(a, b=2, **rest):
        return a

    signature = inspect.signature(calculate)
    assert keys.bind_arguments("T", signature, (1,), {"c": 3}) == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(TypeError, match=r"^T\(a, b=2"):
        keys.bind_arguments("T", signature, (), {})


def test_default_converter_handles_bytes_and_refuses_what_json_cannot_carry():
    assert key_for(["x"], x=b"\x00\xff") != key_for(["x"], x=b"\x00\xfe")
    assert key_for(["x"], x=b"\x00") != key_for(["x"], x={"__bytes__": "00"})
    assert key_for(["x"], x="1") != key_for(["x"], x=1)
    with pytest.raises(TypeError, match="'x'.*set"):
        key_for(["x"], x={1, 2})
    with pytest.raises(TypeError, match="'x'.*string keys"):
        key_for(["x"], x={1: "a"})


def test_a_keyword_call_binds_as_the_signature_would() -> None:

    def plain(a, b=2, *, c=3):  # noqa: ANN001, ANN202
        return a

    signature = inspect.signature(plain)
    fast = keys.bind_arguments("t", signature, (), {"a": 1, "c": 4})
    assert fast == {"a": 1, "b": 2, "c": 4}
    assert fast == keys.bind_arguments("t", signature, (1,), {"c": 4})  # the full binding
    with pytest.raises(TypeError, match="t\\(a, b=2, \\*, c=3\\)"):
        keys.bind_arguments("t", signature, (), {"a": 1, "d": 4})  # an unknown name
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        keys.bind_arguments("t", signature, (), {"b": 1})
