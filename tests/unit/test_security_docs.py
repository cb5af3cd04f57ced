"""The ACL is written in one place: docs/security.md shows exactly the shipped file's users.

docs/security.md carries the user lines of cluster_configs/base/valkey-users.acl between
<!-- acl:begin --> and <!-- acl:end -->; no other document (README.md, docs/*.md) states ACL
rules of its own (an `ACL SETUSER` recipe or a `user ... on` line) that could drift from them.
"""

from __future__ import annotations

import re

from cluster_configs_lib import ACL_FILE, REPO

SECURITY_DOC = REPO / "docs" / "security.md"
ACL_RULE_LINE = re.compile(r"^\s*(user \S+ (on|off)\b|.*\bACL SETUSER \S+ .*[~+-]@?\w)", re.M)


def acl_user_lines() -> list[str]:
    return [line for line in ACL_FILE.read_text(encoding="utf-8").splitlines()
            if line.startswith("user ")]


def test_security_doc_shows_the_shipped_acl():
    text = SECURITY_DOC.read_text(encoding="utf-8")
    block = text.split("<!-- acl:begin -->", 1)[1].split("<!-- acl:end -->", 1)[0]
    lines = [line for line in block.strip().splitlines() if not line.startswith("```")]
    assert lines == acl_user_lines(), (
        "docs/security.md differs from cluster_configs/base/valkey-users.acl: paste the file's "
        "user lines between the acl:begin/acl:end markers")


def test_no_other_document_states_acl_rules():
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        if path == SECURITY_DOC:
            text = text.split("<!-- acl:begin -->")[0] + text.split("<!-- acl:end -->")[1]
        found = [m.group(0).strip() for m in ACL_RULE_LINE.finditer(text)]
        assert not found, f"{path.name} states ACL rules of its own: {found}; link to security.md"
