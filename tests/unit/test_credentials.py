"""The rotation's decisions over a node's parsed `ACL LIST`, as tables: no server needed."""

from __future__ import annotations

import pytest

from cluster_logic.credentials import (
    Credential,
    NodeUser,
    UserAccess,
    admit_commands,
    parse_acl_list,
    password_hash,
    pending_changes,
    render_acl_file,
    replication_password,
    retire_commands,
    wanted_credentials,
)

OLD, NEW = "old-Passw0rd-0123456789", "new-Passw0rd-0123456789"
H_OLD, H_NEW = password_hash(OLD), password_hash(NEW)
APP = UserAccess("app", commands=("+@read",), keys=("app:*",))


def node(**users: tuple[str, ...]) -> dict[str, NodeUser]:
    return {name: NodeUser(name, True, frozenset(hashes)) for name, hashes in users.items()}


def admin(*passwords: str) -> Credential:
    return Credential("default", passwords, ("~*", "&*", "+@all"))


def test_acl_list_is_parsed_into_users_with_their_hashes() -> None:
    parsed = parse_acl_list(
        [
            f"user default on sanitize-payload #{H_OLD} #{H_NEW} ~* &* +@all",
            b"user reader off resetchannels -@all +@read",
            "user fresh on nopass ~* +@all",
        ]
    )
    assert parsed["default"] == NodeUser("default", True, frozenset({H_OLD, H_NEW}))
    assert parsed["reader"].enabled is False and parsed["reader"].hashes == frozenset()
    assert parsed["fresh"].nopass is True


@pytest.mark.parametrize(
    "current, wanted, added",
    [
        # The new password joins the old one; nothing is taken away when admitting.
        (node(default=(H_OLD,)), [admin(NEW)], [f"#{H_NEW}"]),
        # Already there: rules are set again, no password repeated.
        (node(default=(H_NEW,)), [admin(NEW)], []),
        # A user the node lacks is created with its password.
        (node(default=(H_NEW,)), [admin(NEW), Credential("app", (OLD,), APP.rules)], [f"#{H_OLD}"]),
    ],
)
def test_admit_adds_passwords_and_never_removes_one(current, wanted, added) -> None:
    commands = admit_commands(current, wanted)
    assert len(commands) == len(wanted)
    last = commands[-1]
    assert last[:4] == ["ACL", "SETUSER", wanted[-1].name, "on"]
    assert [w for w in last if w.startswith("#")] == added
    assert not any(w.startswith("!") or w in ("resetpass", "nopass") for c in commands for w in c[4:] if current)
    # Rules are reset, then set whole: a narrowed user is narrowed at once.
    assert last[-len(wanted[-1].rules) - 3 :] == ["resetkeys", "resetchannels", "-@all", *wanted[-1].rules]


def test_admit_closes_a_passwordless_user() -> None:
    current = {"default": NodeUser("default", True, frozenset(), nopass=True)}
    (command,) = admit_commands(current, [admin(NEW)])
    assert command[4] == "resetpass" and f"#{H_NEW}" in command


@pytest.mark.parametrize(
    "current, wanted, expected",
    [
        (node(default=(H_OLD, H_NEW)), [admin(NEW)], [["ACL", "SETUSER", "default", f"!{H_OLD}"]]),
        (node(default=(H_NEW,), gone=(H_OLD,)), [admin(NEW)], [["ACL", "DELUSER", "gone"]]),
        (node(default=(H_NEW,)), [admin(NEW)], []),
    ],
)
def test_retire_removes_what_is_no_longer_wanted(current, wanted, expected) -> None:
    assert retire_commands(current, wanted) == expected


def test_retire_never_deletes_the_admin() -> None:
    assert retire_commands(node(default=(H_OLD,)), [Credential("app", (NEW,), APP.rules)]) == []


@pytest.mark.parametrize(
    "current, problems",
    [
        (node(default=(H_NEW,)), []),
        (node(default=(H_OLD,)), ["user default lacks its current password"]),
        (node(default=(H_OLD, H_NEW)), ["user default still accepts a previous password"]),
        (node(default=(H_NEW,), gone=()), ["user gone should be removed"]),
        ({}, ["user default missing"]),
    ],
)
def test_pending_changes_name_users_never_hashes(current, problems) -> None:
    found = pending_changes(current, [admin(NEW)])
    assert found == problems
    assert not any(H_OLD in p or H_NEW in p for p in found)


def test_the_acl_file_holds_hashes_and_the_replication_user_may_only_replicate() -> None:
    credentials = wanted_credentials(NEW, [APP], {"app": OLD})
    text = render_acl_file(credentials)
    assert NEW not in text and OLD not in text
    users = parse_acl_list(text.splitlines())
    assert users["default"].hashes == {H_NEW}
    assert users["replication"].hashes == {password_hash(replication_password(NEW))}
    replication_line = next(line for line in text.splitlines() if line.startswith("user replication"))
    assert replication_line.split()[4:] == ["-@all", "+psync", "+sync", "+replconf", "+ping"]
    # Rotating the admin rotates the replication user with it.
    assert replication_password(NEW) != replication_password(OLD)


def test_a_user_without_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match="app"):
        wanted_credentials(NEW, [APP], {})
    assert "0123456789" not in repr(admin(NEW))
