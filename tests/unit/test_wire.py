from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.spec.wire import ShimRequest, WireError, decode_reply, decode_request, encode_reply, encode_request

env_keys = st.text(st.characters(blacklist_characters="=\0", blacklist_categories=("Cs",)), min_size=1, max_size=12)
env_values = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)


@given(plugin=st.text(st.characters(blacklist_characters="\n\0", blacklist_categories=("Cs",)), max_size=20),
       env=st.dictionaries(env_keys, env_values, max_size=8), stdin=st.text(st.characters(blacklist_categories=("Cs",))))
def test_request_round_trip(plugin: str, env: dict[str, str], stdin: str) -> None:
    assert decode_request(encode_request(ShimRequest(plugin, env, stdin))) == ShimRequest(plugin, env, stdin)


@given(code=st.integers(0, 255), stdout=st.text(st.characters(blacklist_categories=("Cs",))))
def test_reply_round_trip(code: int, stdout: str) -> None:
    assert decode_reply(encode_reply(code, stdout)) == (code, stdout.encode())


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n", b"RAILNET1 x", b"RAILNET1 x\nCNI_COMMAND=ADD"])
def test_malformed_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_request(data)
