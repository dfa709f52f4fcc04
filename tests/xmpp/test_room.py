"""Room affiliations planned from MLS membership (mls_xmpp.xmpp.room)."""

from __future__ import annotations

from mls_xmpp.xmpp.room import plan_affiliations

A, B, C, D = "a@x", "b@x", "c@x", "d@x"


def test_owner_gives_every_member_what_the_rules_need() -> None:
    current = {A: "owner"}
    plan = plan_affiliations(current, {A, B, C}, A, may_change={A, B})
    assert plan == [(B, "admin"), (C, "member")]


def test_admin_can_only_let_members_back_in() -> None:
    current = {A: "owner", B: "admin", D: "admin"}  # C lost its affiliation
    assert plan_affiliations(current, {A, B, C, D}, B, may_change={A, B, C, D}) == [
        (C, "member")]


def test_nothing_when_the_affiliations_follow_membership() -> None:
    current = {A: "owner", B: "admin", C: "admin"}
    assert plan_affiliations(current, {A, B, C}, A, may_change={A, B, C}) == []
    assert plan_affiliations(current, {A, B, C}, B, may_change={A, B, C}) == []


def test_a_plain_member_changes_nothing() -> None:
    current = {A: "owner", B: "member"}
    assert plan_affiliations(current, {A, B, C}, B, may_change=set()) == []


def test_nobody_touches_the_owner() -> None:
    current = {A: "owner", B: "owner"}
    assert plan_affiliations(current, {A, B}, A, may_change=set()) == []


def test_revoke_only_what_the_own_affiliation_reaches() -> None:
    current = {A: "owner", B: "admin", C: "admin", D: "member"}
    # B (admin) removed C (admin) and D (member): it can take out only D
    assert plan_affiliations(current, {A, B}, B, may_change={A, B}, revoke={C, D}) == [
        (D, "none")]
    # the owner takes out both
    assert plan_affiliations(current, {A, B}, A, may_change={A, B}, revoke={C, D}) == [
        (C, "none"), (D, "none")]


def test_drift_never_revokes_an_account_that_was_not_removed() -> None:
    # E is affiliated but not (yet, in this device's view) in the group
    current = {A: "owner", B: "admin", "e@x": "member"}
    assert plan_affiliations(current, {A, B}, A, may_change={A, B}) == []


def test_an_account_still_in_the_group_is_not_revoked() -> None:
    current = {A: "owner", B: "admin"}
    assert plan_affiliations(current, {A, B}, A, may_change={A, B}, revoke={B}) == []
