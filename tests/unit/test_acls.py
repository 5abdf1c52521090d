"""deploy/acls.py: the two topics that hold sensitive values are read by one role each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from adapter.core import topics

PREFIX = "synapse.example.com"


@pytest.fixture(scope="module")
def acls() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "deploy" / "acls.py"
    spec = importlib.util.spec_from_file_location("deploy_acls", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _readers(acls: ModuleType, topic: str) -> set[str]:
    readers = set()
    for role in acls.ROLES:
        instance = "i" if role in acls._INSTANCE_ROLES else None
        for acl in acls.role_acls(role, PREFIX, instance):
            covers = (
                acl.name == topic
                if acl.pattern == "literal"
                else topic.startswith(acl.name)
            )
            if acl.resource == "topic" and acl.operation == "READ" and covers:
                readers.add(role)
    return readers


def test_only_the_dlq_reader_reads_dead_letters(acls: ModuleType) -> None:
    assert _readers(acls, topics.dlq_topic(PREFIX)) == {"dlq-reader"}


def test_only_the_user_ip_reader_reads_access_tokens(acls: ModuleType) -> None:
    assert _readers(acls, topics.user_ip_topic(PREFIX)) == {"user-ip-reader"}


def test_the_dlq_reader_needs_an_instance_for_its_group(acls: ModuleType) -> None:
    with pytest.raises(ValueError, match="needs an instance name"):
        acls.role_acls("dlq-reader", PREFIX)
    groups = [
        a for a in acls.role_acls("dlq-reader", PREFIX, "ops") if a.resource == "group"
    ]
    assert [g.name for g in groups] == [topics.consumer_group(PREFIX, "ops")]
