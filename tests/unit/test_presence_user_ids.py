"""``presence track --user``: Matrix user IDs only, checked before anything runs."""

from __future__ import annotations

import pytest

from adapter.cli.presence import _check_user_ids
from adapter.core.errors import ConfigError


@pytest.mark.parametrize(
    "user",
    ["@a:x", "@alice:example.org", "@Alice_1=/.+-:example.org:8448", "@a:[::1]:8448"],
)
def test_matrix_user_ids_are_accepted(user: str) -> None:
    _check_user_ids([user])


@pytest.mark.parametrize(
    "user",
    ["", "alice", "@alice", "@:x", "@a b:x", "@a:ex ample.org", "@a:x:y", "@a:x:99999x",
     "@" + "a" * 250 + ":x.org"],
)  # fmt: skip
def test_anything_else_is_one_config_error(user: str) -> None:
    with pytest.raises(ConfigError, match="is not a Matrix user ID") as caught:
        _check_user_ids(["@ok:x", user])
    assert repr(user) in str(caught.value)
